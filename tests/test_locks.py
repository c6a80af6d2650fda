"""Locks between processes (ltexp/locks.py): they exclude, leave no file behind, live in a folder
only this user can write to, follow no planted link, never block on a planted FIFO, and a wait
on a stuck holder names it and ends (issue 39, item 1)."""

from __future__ import annotations

import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import pytest

from ltexp import locks
from ltexp.errors import HostError


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The temporary folder is ``tmp_path/tmp`` for this test and the processes it forks."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    return tmp


def _lock_name(kind: str, guarded: Path) -> Path:
    import hashlib

    key = hashlib.sha256(os.path.realpath(guarded).encode()).hexdigest()[:16]
    return locks.lock_folder() / f"{kind}-{key}.lock"


def test_a_lock_leaves_no_file_behind_and_still_excludes(tmp_path: Path, private_tmp: Path) -> None:
    """The holder removes the lock's file; a second holder waits until then."""
    log = tmp_path / "log"

    def hold(who: str) -> None:
        with locks.held("test", tmp_path / "guarded"):
            with open(log, "a") as f:
                f.write(f"{who} in\n")
            time.sleep(0.3)
            with open(log, "a") as f:
                f.write(f"{who} out\n")

    fork = multiprocessing.get_context("fork")
    procs = [fork.Process(target=hold, args=(who,)) for who in ("a", "b", "c")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    lines = log.read_text().split()
    pairs = [lines[i : i + 4] for i in range(0, len(lines), 4)]
    assert len(pairs) == 3
    assert all(p[0] == p[2] and p[1] == "in" and p[3] == "out" for p in pairs)  # never interleaved
    assert list(locks.lock_folder().iterdir()) == []


def test_the_lock_folder_is_private_to_this_user(private_tmp: Path) -> None:
    folder = locks.lock_folder()
    assert folder.parent == private_tmp and folder.name == f"ltexp-{os.geteuid()}"
    assert folder.stat().st_mode & 0o777 == 0o700
    with locks.held("test", private_tmp / "guarded"):
        (lock,) = folder.iterdir()
        assert lock.stat().st_mode & 0o777 == 0o600
        assert lock.read_text().startswith(f"pid {os.getpid()} on ")


def test_the_runtime_folder_is_used_when_the_session_has_one(
    tmp_path: Path, private_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = tmp_path / "run-user"
    runtime.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    assert locks.lock_folder() == runtime / "ltexp"
    runtime.chmod(0o777)  # not private: the temporary folder's own private folder instead
    assert locks.lock_folder().parent == private_tmp


@pytest.mark.parametrize("planted", ["link", "other-user", "open-to-all", "file"])
def test_a_planted_lock_folder_is_refused_in_one_line(private_tmp: Path, planted: str) -> None:
    folder = private_tmp / f"ltexp-{os.geteuid()}"
    target = private_tmp / "elsewhere"
    target.mkdir(mode=0o700)
    if planted == "link":
        folder.symlink_to(target)
    elif planted == "file":
        folder.write_text("")
    else:
        folder.mkdir(mode=0o700)
        if planted == "open-to-all":
            folder.chmod(0o777)
        elif os.geteuid() == 0:
            os.chown(folder, 65534, 65534)
        else:
            pytest.skip("only root can give a folder to another user")
    refused = pytest.raises(HostError, match="is not private to this user")
    with refused as err, locks.held("store", private_tmp / "mlflow.db"):
        pass
    assert "\n" not in str(err.value)
    assert list(target.iterdir()) == []  # nothing created through the link


def test_a_planted_link_is_not_followed(private_tmp: Path) -> None:
    guarded = private_tmp / "mlflow.db"
    name = _lock_name("store", guarded)
    victim = private_tmp / "victim"
    name.symlink_to(victim)
    refused = pytest.raises(HostError, match="cannot open the lock file")
    with refused as err, locks.held("store", guarded):
        pass
    assert str(name) in str(err.value) and not victim.exists()


def test_a_planted_fifo_is_refused_at_once_instead_of_blocking(private_tmp: Path) -> None:
    guarded = private_tmp / "reports" / "r"
    name = _lock_name("report", guarded)
    os.mkfifo(name)
    started = time.monotonic()
    with pytest.raises(HostError, match="is not a regular file"), locks.held("report", guarded):
        pass
    assert time.monotonic() - started < 5


def test_a_stuck_holder_is_named_then_given_up_on(
    private_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(locks, "NOTICE_SECONDS", 0.2)
    monkeypatch.setenv("LTEXP_LOCK_SECONDS", "1")
    guarded = private_tmp / "mlflow.db"
    ready = multiprocessing.get_context("fork").Event()
    release = multiprocessing.get_context("fork").Event()

    def hold() -> None:
        with locks.held("store", guarded):
            ready.set()
            release.wait(30)

    holder = multiprocessing.get_context("fork").Process(target=hold)
    holder.start()
    try:
        assert ready.wait(30)
        started = time.monotonic()
        with pytest.raises(HostError) as err, locks.held("store", guarded):
            pass
        waited = time.monotonic() - started
    finally:
        release.set()
        holder.join(30)
    assert 1 <= waited < 10
    assert f"held by pid {holder.pid} on " in str(err.value)
    assert "LTEXP_LOCK_SECONDS" in str(err.value)
    notice = capsys.readouterr().err.strip().splitlines()
    assert len(notice) == 1 and f"held by pid {holder.pid}" in notice[0]
    with locks.held("store", guarded):  # released by the holder: free again
        pass


@pytest.mark.parametrize("raw", ["", "abc", "-3", "0", "nan", "1e400"])
def test_an_unusable_wait_limit_falls_back_to_the_default(
    monkeypatch: pytest.MonkeyPatch, raw: str
) -> None:
    monkeypatch.setenv("LTEXP_LOCK_SECONDS", raw)
    assert locks.wait_limit() == locks.WAIT_SECONDS
