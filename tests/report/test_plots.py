"""What the report's figures show: every line visible, no overlapping labels."""

from __future__ import annotations

import itertools
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd
import pytest

from ltexp.report import plots
from ltexp.report.model import Grid
from ltexp.report.tables import COLUMNS


@pytest.fixture
def kept(monkeypatch: pytest.MonkeyPatch) -> list:
    """The figures the plotting functions draw, kept open instead of saved."""
    figures: list = []
    monkeypatch.setattr(plots, "_save", lambda fig, stem: figures.append(fig) or [])
    yield figures
    for fig in figures:
        plt.close(fig)


def _row(model: str, loss: str, base: float) -> dict:
    return {"model": model, "loss": loss, "train_split": "lt"} | {
        c: base + 0.01 * i for i, c in enumerate(COLUMNS)
    }


def test_a_line_equal_to_another_stays_visible_and_says_so(kept: list, tmp_path: Path) -> None:
    """The issue's fig_tiny_cnn: Softmax hidden under Equalization, which had the same values."""
    cells = pd.DataFrame(
        [_row("tiny_cnn", "ce", 0.5), _row("tiny_cnn", "seql", 0.5), _row("tiny_cnn", "bs", 0.6)]
    )
    plots.lines_figure(cells, "tiny_cnn", ["ce", "seql", "bs"], tmp_path / "fig")
    (fig,) = kept
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["Softmax loss", "Equalization loss (= Softmax loss)", "Balanced Softmax loss"]
    lines = ax.get_lines()
    # each line has its own marker and dash, and equal values are drawn apart
    assert len({(ln.get_marker(), ln.get_linestyle()) for ln in lines}) == 3
    assert (lines[0].get_ydata() == lines[1].get_ydata()).all()
    assert (lines[0].get_xdata() != lines[1].get_xdata()).all()


def test_paired_figure_tick_labels_never_overlap(kept: list, tmp_path: Path) -> None:
    """The issue's "Balanced" and "Long-tailed" ticks ran into each other."""
    models = ["resnet50", "mobilenet_v2", "vit_b16", "convnext_base"]
    rows = []
    for model, loss in itertools.product(models, ["focal", "bs", "ldam"]):
        row = {"model": model, "loss": loss, "train_split": "lt"}
        for c in COLUMNS:
            row |= {c: 0.02, f"{c}_ci_low": -0.01, f"{c}_ci_high": 0.05}
        rows.append(row)
    plots.paired_figure(pd.DataFrame(rows), Grid(models, ["ce"], ["lt"]), tmp_path / "fig")
    (fig,) = kept
    fig.tight_layout()
    renderer = fig.canvas.get_renderer()
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 4 and fig.get_size_inches()[0] <= 10  # 2 × 2, fits a page
    for ax in panels:
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        assert len(boxes) == len(COLUMNS)
        for a, b in itertools.pairwise(boxes):
            assert not a.overlaps(b), ax.get_title()
