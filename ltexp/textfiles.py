"""Small text files a user names (claims, published results, benchmark speeds), read safely.

A path on a command line can name anything: a FIFO that blocks a reader for ever, ``/dev/zero``
that never ends, a folder, a file of gigabytes. :func:`read_small_text` opens it without
blocking, reads only a regular file, and only up to a limit, so each of those is one line.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ltexp.errors import ConfigError, LtexpError

# the largest such file ltexp reads: a claims file of hundreds of claims, a CSV of thousands of
# published results, a benchmark's JSON, all well below it
MAX_TEXT_BYTES = 4 * 1024 * 1024


def read_small_text(
    path: str | Path,
    what: str,
    limit: int = MAX_TEXT_BYTES,
    error: type[LtexpError] = ConfigError,
) -> str:
    """The UTF-8 text of the regular file ``path`` (``what`` names it in errors).

    Raises:
        ``error``: the file is missing, not a regular file (a folder, a FIFO, a device),
        larger than ``limit`` bytes, or not UTF-8.
    """
    name = str(path)
    try:
        fd = os.open(Path(path).expanduser(), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        raise error(f"cannot read {what} {name!r} ({exc.strerror}); give a readable file") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{what} {name!r} is not a regular file; give a text file")
        if info.st_size > limit:
            raise error(
                f"{what} {name!r} is {info.st_size:,} bytes, more than the {limit:,} such a file "
                "can need; give the right file"
            )
        data = os.read(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:  # grew while being read
        raise error(f"{what} {name!r} is more than {limit:,} bytes; give the right file")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise error(
            f"{what} {name!r} is not UTF-8 text (byte {exc.start}); save it as UTF-8"
        ) from None
