"""The false-mark rate and the power of the report's paired test, by simulation.

Prints the two Markdown tables of docs/protocol.md ("Statistics"): how often
:func:`ltexp.statistics.paired_difference` marks a difference (uncorrected, 5 %) at 1, 2, 3 and
5 seeds a side, for methods that do not differ (three ways) and for a true difference of 1 and 2
points, on 5,000 test images (the scenarios are :class:`ltexp.statistics.Scenario`).

    python scripts/power_table.py [--trials 2000]
"""

from __future__ import annotations

import argparse

from ltexp.statistics import Scenario, simulate_marks

SEEDS = (1, 2, 3, 5)
NULLS = (
    Scenario("the same method"),
    Scenario("methods trading images (image correlation 0.9)", image_correlation=0.9),
    Scenario("seeds that move the accuracy (model SD 0.04)", seed_sd=0.04),
)
EFFECTS = (
    Scenario("1 point", effect=0.01),
    Scenario("1 point, seeds that move the accuracy", effect=0.01, seed_sd=0.04),
    Scenario("2 points", effect=0.02),
)


def _table(title: str, scenarios: tuple[Scenario, ...], trials: int) -> str:
    lines = [
        f"| {title} | " + " | ".join(f"{s} seed{'s' * (s > 1)}" for s in SEEDS) + " |",
        "|---|" + "---:|" * len(SEEDS),
    ]
    for scenario in scenarios:
        rates = [simulate_marks(scenario, s, trials, seed=s) for s in SEEDS]
        lines.append(f"| {scenario.name} | " + " | ".join(f"{r:.1%}" for r in rates) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=2000, help="simulated studies per cell")
    args = parser.parse_args()
    print(_table("false marks (nominal 5 %)", NULLS, args.trials))
    print()
    print(_table("power", EFFECTS, args.trials))


if __name__ == "__main__":
    main()
