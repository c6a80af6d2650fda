"""Locks between processes on one machine, named after the path they guard.

The lock file lives in the temporary folder, keyed by the real path (links followed), so the
guarded folder holds only its own files. The holder removes it before releasing it, so nothing
is left behind; a process that was waiting on the removed file finds the name gone or taken by a
new file and locks again. ``flock`` ends with the process that holds it, so a killed holder never
blocks the next one (its file stays, empty, and is used again).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def held(kind: str, path: str | Path) -> Iterator[None]:
    """Hold the ``kind`` lock of ``path`` while the block runs; another process asking for the
    same one waits until it is released."""
    key = hashlib.sha256(os.path.realpath(path).encode()).hexdigest()[:16]
    name = os.path.join(tempfile.gettempdir(), f"ltexp-{kind}-{key}.lock")
    while True:
        lock = open(name, "a")  # noqa: SIM115 - closed below, after the block
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if os.stat(name).st_ino == os.fstat(lock.fileno()).st_ino:
                break  # the file the name still points to: the lock is ours
        except FileNotFoundError:
            pass  # the previous holder removed it: lock the name's new file
        lock.close()
    try:
        yield
    finally:
        os.unlink(name)
        lock.close()
