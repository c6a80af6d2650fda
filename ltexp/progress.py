"""Progress of a long loop, for a person watching a terminal or reading a log.

On a terminal: a tqdm bar. Otherwise (a log file, ``mlflow run``, a CI job, a cluster's job
output): one line at least every ``LTEXP_PROGRESS_SECONDS`` (default 30) seconds, such as
``[3/28] resnet50-focal-lt-s42 epoch 3/90  step 120/352  412 img/s  ETA 0:05:12``, so a long
step never looks hung and says which cell it is (:func:`labelled`). Neither reads anything from
the GPU: it counts steps and images on the host.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import timedelta
from typing import Any, TextIO

from tqdm.auto import tqdm

DEFAULT_SECONDS = 30.0
_LABEL: ContextVar[str] = ContextVar("ltexp_progress_label", default="")


@contextmanager
def labelled(label: str) -> Iterator[None]:
    """Name what the progress lines inside are about (``[3/28] resnet50-focal-lt-s42``); an
    inner label does not replace an outer one (a study's cell keeps its index)."""
    token = _LABEL.set(_LABEL.get() or label)
    try:
        yield
    finally:
        _LABEL.reset(token)


def interval() -> float:
    """Seconds between progress lines (``LTEXP_PROGRESS_SECONDS``, default 30)."""
    try:
        return float(os.environ.get("LTEXP_PROGRESS_SECONDS", DEFAULT_SECONDS))
    except ValueError:
        return DEFAULT_SECONDS


class Progress:
    """Count steps of a loop of ``total`` steps; show them as a bar or as periodic lines.

    Args:
        total: steps of the loop.
        desc: what the loop is (``epoch 3/90``).
        enabled: False shows nothing (another rank reports).
        stream: where lines go (default: stdout); a bar is drawn when it is a terminal.
    """

    def __init__(
        self, total: int, desc: str, *, enabled: bool = True, stream: TextIO | None = None
    ) -> None:
        self.total = total
        self.desc = f"{_LABEL.get()} {desc}" if _LABEL.get() else desc
        self.stream = stream or sys.stdout
        self.enabled = enabled
        self.steps = self.images = 0
        self.started = self.last_line = time.perf_counter()
        self.every = interval()
        self.bar: Any = None
        if enabled and self.stream.isatty():
            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)

    def update(self, images: int) -> None:
        """One more step of ``images`` images."""
        if not self.enabled:
            return
        self.steps += 1
        self.images += images
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.perf_counter()
        if now - self.last_line >= self.every and self.steps < self.total:
            self.last_line = now
            print(self.line(now), file=self.stream, flush=True)

    def line(self, now: float | None = None) -> str:
        """``<label> <desc>  step s/S  N img/s  ETA h:mm:ss``."""
        elapsed = max((now or time.perf_counter()) - self.started, 1e-9)
        eta = (self.total - self.steps) * elapsed / max(self.steps, 1)
        return (
            f"{self.desc}  step {self.steps}/{self.total}  {self.images / elapsed:,.0f} img/s  "
            f"ETA {timedelta(seconds=round(eta))}"
        )

    def set_postfix(self, **values: str) -> None:
        """Extra values on the bar (only a bar shows them: reading them may sync the GPU)."""
        if self.bar is not None:
            self.bar.set_postfix(**values)

    @property
    def has_bar(self) -> bool:
        return self.bar is not None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
