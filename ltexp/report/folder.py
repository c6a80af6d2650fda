"""Where a report goes, and putting it there whole: a report folder is replaced at once, so a
killed process or a full disk leaves the previous report or the new one, never half of one."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from ltexp import locks
from ltexp.checkpoint import folder_problem
from ltexp.errors import ConfigError, HostError


def report_folder(name: str) -> Path:
    """``reports/<experiment>`` with the name made a safe folder name (never a path)."""
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "experiment"
    return Path("reports") / slug


def check_writable(path: Path) -> None:
    """Refuse a report folder that cannot be made or written, before anything is built; a
    folder made only to test it is removed again (:func:`ltexp.checkpoint.folder_problem`).
    Under the report's lock: a publish moving the folder meanwhile would lose the probe, or
    find it and refuse the folder as not its own."""
    with locks.held("report", path):
        why = folder_problem(path)
    if why:
        raise ConfigError(
            f"output_dir {str(path)!r} cannot be written ({why}); choose another output_dir"
        )


REPORT_SUFFIXES = (".csv", ".png", ".pdf", ".md", ".tex", ".html", ".json")


def publish(files: list[Path], out: Path) -> None:
    """Put a built report in ``out`` at once: copied into a folder beside it, which then takes
    its place, so that a killed process leaves the previous report or the new one, never half.
    A folder that holds more than a report (a user's folder) gets each file replaced atomically
    instead, and keeps the rest. Two processes publishing the same folder take turns (two
    studies ending together), so neither removes the files the other is copying."""
    out.parent.mkdir(parents=True, exist_ok=True)
    with locks.held("report", out):
        try:
            _publish(files, out)
        except OSError as e:  # a full disk: say where, and leave no half-copied folder
            for partial in out.parent.glob(f".{out.name}.incoming-{os.getpid()}"):
                shutil.rmtree(partial, ignore_errors=True)
            for part in out.glob(".*.incoming") if out.is_dir() else ():
                part.unlink(missing_ok=True)
            raise HostError(
                f"cannot write the report to '{out}' ({e.strerror or e}); free space there or "
                f"choose another output_dir (the previous report, if any, is unchanged)"
            ) from None


def _publish(files: list[Path], out: Path) -> None:
    parent = out.parent
    for stale in parent.glob(f".{out.name}.*-*"):  # what a killed publish left: the lock is ours
        shutil.rmtree(stale, ignore_errors=True)
    own = not out.exists() or all(
        p.is_file() and p.suffix in REPORT_SUFFIXES for p in out.iterdir()
    )
    if not own:
        for path in files:
            part = out / f".{path.name}.incoming"
            shutil.copyfile(path, part)
            os.replace(part, out / path.name)
        return
    incoming = parent / f".{out.name}.incoming-{os.getpid()}"
    shutil.rmtree(incoming, ignore_errors=True)
    incoming.mkdir()
    for path in files:
        shutil.copyfile(path, incoming / path.name)
    previous = parent / f".{out.name}.previous-{os.getpid()}"
    if out.exists():
        os.replace(out, previous)
    os.replace(incoming, out)
    shutil.rmtree(previous, ignore_errors=True)
