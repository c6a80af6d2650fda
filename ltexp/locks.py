"""Locks between processes on one machine, named after the path they guard.

A lock is an ``flock`` on a file in a folder only this user can write to: ``$XDG_RUNTIME_DIR/
ltexp`` when the session has one, else ``<tmp>/ltexp-<uid>``, created ``0700`` and refused when
it is a link, another user's, or open to others. A name in the shared temporary folder could be
computed and planted by anyone on the machine (a link ltexp would follow, a FIFO that blocks
every command for ever). Inside that folder the file is keyed by the real path of what it guards
(links followed), so the guarded folder holds only its own files, and it is opened without
following a link and used only when it is a regular file.

The holder writes its pid and host into the file and removes the file before releasing it, so
nothing is left behind; a process that was waiting on the removed file finds the name gone or
taken by a new file and locks again. ``flock`` ends with the process that holds it, so a killed
holder never blocks the next one. A wait longer than :data:`NOTICE_SECONDS` prints one line
naming the holder; one longer than ``LTEXP_LOCK_SECONDS`` (default :data:`WAIT_SECONDS`) gives up
with an error saying who holds it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
import stat
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ltexp.errors import HostError

# The longest a lock is held is a report folder being copied into place or a sqlite store's
# schema being created: seconds. Two minutes is far past that, and short enough that a stuck
# holder is reported before a user gives up on a silent command.
WAIT_SECONDS = 120.0
NOTICE_SECONDS = 5.0
_POLL_SECONDS = 0.05


def lock_folder() -> Path:
    """This user's private folder for lock files, created ``0700`` if missing.

    Raises :class:`HostError` when the folder exists but is not safe: a link, not a folder,
    owned by another user, or writable by others.
    """
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and _private(Path(runtime), must_exist=True):
        folder = Path(runtime) / "ltexp"
    else:
        folder = Path(tempfile.gettempdir()) / f"ltexp-{os.geteuid()}"
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    except OSError as exc:
        raise HostError(
            f"cannot create the lock folder '{folder}' ({exc.strerror}); set TMPDIR to a folder "
            "this user can write to"
        ) from None
    if not _private(folder, must_exist=True):
        raise HostError(
            f"the lock folder '{folder}' is not private to this user (a link, not a folder, "
            "another user's, or open to others); remove it, or set TMPDIR to a folder only this "
            "user can write to"
        )
    return folder


def _private(folder: Path, must_exist: bool) -> bool:
    """Whether ``folder`` is a real folder of this user that nobody else can write to."""
    try:
        info = os.lstat(folder)
    except FileNotFoundError:
        return not must_exist
    return (
        stat.S_ISDIR(info.st_mode)
        and info.st_uid == os.geteuid()
        and info.st_mode & (stat.S_IWGRP | stat.S_IWOTH) == 0
    )


def _open(name: str) -> int:
    """Open (or create) the lock file ``name`` without following a link, as a regular file."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(name, flags, 0o600)
    except OSError as exc:
        raise HostError(
            f"cannot open the lock file '{name}' ({exc.strerror}); remove it if it is not a "
            "regular file of this user"
        ) from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise HostError(f"the lock file '{name}' is not a regular file; remove it")
    return fd


def _holder(fd: int) -> str:
    """Who holds the lock, as its holder wrote it (``pid 123 on host``), or ``another process``."""
    try:
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
    except OSError:
        text = ""
    return text if text.startswith("pid ") and text.isprintable() else "another process"


def wait_limit() -> float:
    """How long a lock is waited for: ``LTEXP_LOCK_SECONDS``, or :data:`WAIT_SECONDS`."""
    raw = os.environ.get("LTEXP_LOCK_SECONDS", "")
    try:
        value = float(raw) if raw else WAIT_SECONDS
    except ValueError:
        value = WAIT_SECONDS
    return value if 0 < value < 1e7 else WAIT_SECONDS


@contextmanager
def held(kind: str, path: str | Path) -> Iterator[None]:
    """Hold the ``kind`` lock of ``path`` while the block runs; another process asking for the
    same one waits until it is released, up to :func:`wait_limit` seconds (then
    :class:`HostError` naming the holder)."""
    key = hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:16]
    name = str(lock_folder() / f"{kind}-{key}.lock")
    start = time.monotonic()
    noticed = False
    limit = wait_limit()
    while True:
        fd = _open(name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            waited = time.monotonic() - start
            holder = _holder(fd)
            os.close(fd)
            if waited > limit:
                raise HostError(
                    f"gave up after {waited:.0f} s waiting for the {kind} lock of '{path}', held "
                    f"by {holder}; if that process is stuck, stop it (or set LTEXP_LOCK_SECONDS "
                    "to wait longer)"
                ) from None
            if waited > NOTICE_SECONDS and not noticed:
                noticed = True
                print(
                    f"ltexp: waiting for the {kind} lock of '{path}', held by {holder} "
                    f"(up to {limit:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            time.sleep(_POLL_SECONDS)
            continue
        try:
            if os.lstat(name).st_ino == os.fstat(fd).st_ino:
                break  # the file the name still points to: the lock is ours
        except FileNotFoundError:
            pass  # the previous holder removed it: lock the name's new file
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
        yield
    finally:
        os.unlink(name)
        os.close(fd)
