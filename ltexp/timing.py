"""Where a command's time goes: wall-clock seconds per phase, summed over the process.

The steps are phases (:func:`timed` as a decorator: ``prepare``, ``train``, ``evaluate``,
``report``) and the train step times its parts (``train.epochs`` from each epoch's own clock,
``train.checkpoint``, ``train.register``). The cost is two clock reads per phase. Only this
process's phases count: cells trained by ``--workers`` or Ray processes are not in its totals.

With ``LTEXP_TIMINGS=<file>`` in the environment, the ``ltexp``
command writes the totals there as JSON when it ends; ``ltexp bench --study`` reads them to say
where each second of a study went (docs/performance.md).
"""

from __future__ import annotations

import json
import os
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

TIMINGS_ENV = "LTEXP_TIMINGS"

_TOTALS: dict[str, float] = defaultdict(float)
_COUNTS: dict[str, int] = defaultdict(int)


@contextmanager
def timed(phase: str) -> Iterator[None]:
    """Add the wall-clock time of the ``with`` body to ``phase``."""
    started = time.perf_counter()
    try:
        yield
    finally:
        add(phase, time.perf_counter() - started)


def add(phase: str, seconds: float) -> None:
    """Add ``seconds`` measured elsewhere (an epoch's own clock) to ``phase``."""
    _TOTALS[phase] += seconds
    _COUNTS[phase] += 1


def totals() -> dict[str, dict[str, float]]:
    """``{phase: {"seconds": s, "count": n}}`` so far in this process."""
    return {p: {"seconds": s, "count": _COUNTS[p]} for p, s in sorted(_TOTALS.items())}


def write_if_asked() -> None:
    """Write :func:`totals` to the file named by ``LTEXP_TIMINGS``, if set."""
    path = os.environ.get(TIMINGS_ENV)
    if path:
        Path(path).write_text(json.dumps(totals(), indent=1))
