"""One command measured as a user runs it: its wall seconds, the peak resident memory of its
processes, its output and its phases (``LTEXP_TIMINGS``). Shared by the scripts beside it."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

# runs a command and reports the peak resident memory of its processes: getrusage's largest
# waited-for descendant (the step's Python, below `mlflow run`), in KiB on Linux
PEAK = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:])\n"
    "peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
    "print(f'measured-peak-kib {peak}', file=sys.stderr)\n"
    "sys.exit(code)\n"
)


@dataclass
class Measured:
    """One command's wall seconds, peak memory (MiB), standard output and phase timings."""

    seconds: float
    peak_mib: float
    stdout: str
    phases: dict[str, float]


def run_measured(args: list[str], env: dict[str, str], cwd: Path) -> Measured:
    """Run ``args`` in ``cwd`` (a new process); exit with its error when it fails."""
    timings = cwd / "timings.json"
    timings.unlink(missing_ok=True)
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PEAK, *args],
        env={**env, "LTEXP_TIMINGS": str(timings)},
        cwd=cwd,
        capture_output=True,
        text=True,
    )
    seconds = time.perf_counter() - started
    if done.returncode:
        sys.exit(f"{' '.join(args[:6])} … failed: {done.stderr.strip()[-1500:]}")
    peak = re.findall(r"^measured-peak-kib (\d+)$", done.stderr, re.M)
    totals = json.loads(timings.read_text()) if timings.is_file() else {}
    phases = {phase: t["seconds"] for phase, t in totals.items()}
    return Measured(seconds, int(peak[-1]) / 1024, done.stdout, phases)
