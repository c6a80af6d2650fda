"""``ltexp bench``: training throughput, model-only ceiling vs ltexp's real training step."""

from __future__ import annotations

import argparse


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``ltexp bench``."""
    parser.add_argument(
        "--model",
        action="append",
        default=None,
        help="backbone to measure (repeatable; default: the device's default)",
    )


def run_bench(args: argparse.Namespace) -> int:
    """Run the benchmark; print a table or JSON."""
    raise NotImplementedError
