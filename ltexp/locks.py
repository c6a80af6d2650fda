"""Locks between processes on one machine, named after the path they guard.

The lock file lives in the temporary folder, keyed by the real path (links followed), so the
guarded folder holds only its own files; ``flock`` ends with the process that holds it, so a
killed process never leaves a lock behind.
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
    with open(os.path.join(tempfile.gettempdir(), f"ltexp-{kind}-{key}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield
