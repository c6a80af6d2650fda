"""The report never merges or replaces different experiments: an experiment holding a thesis
cell beside an LDAM+DRW run, a cosine-head run and a focal run with another γ shows each as what
it is; the thesis tables hold the plain runs, and ``variant=…`` chooses another."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from ltexp import schema
from ltexp.config import build_config
from ltexp.steps.aggregate import run_aggregate
from ltexp.study.run import CellResult, run_cell
from tests.conftest import store_in, tiny_overrides

VARIANTS = {
    "ldam": {"loss": "ldam"},
    "drw_epoch=1": {"loss": "ldam", "drw_epoch": 1},
    "head=cosine": {"loss": "ldam", "head": "cosine"},
    "focal": {"loss": "focal"},
    "focal_gamma=1": {"loss": "focal", "focal_gamma": 1.0},
}


@dataclass
class Store:
    folder: Path
    cfg: object
    cells: dict[str, CellResult]


@pytest.fixture(scope="module")
def variants_store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    folder = tmp_path_factory.mktemp("variants")
    with store_in(folder):
        cfg = build_config(
            "demo",
            tiny_overrides(folder, train_splits="lt", epochs=3, lr=0.01, experiment="variants"),
        )
        trained = {name: run_cell(cfg.replace(**values)) for name, values in VARIANTS.items()}
        return Store(folder, cfg, trained)


@pytest.fixture
def store(variants_store: Store):
    with store_in(variants_store.folder):
        yield variants_store


def _report(store: Store, out: Path, **options: object) -> pd.DataFrame:
    run_aggregate(store.cfg.replace(output_dir=str(out), **options))
    return pd.read_csv(out / "results_tiny_cnn_lt.csv").set_index("loss")


def _balanced(cell: CellResult) -> float:
    return cell.metrics[schema.test_metric("balanced")]


def _near(value: float) -> object:
    return pytest.approx(value, abs=1e-6)  # the CSVs hold six decimals


def test_each_variant_is_a_row_of_its_own_and_the_thesis_tables_hold_the_plain_ones(
    store: Store, tmp_path: Path
) -> None:
    # the variants trained to different results, so that a swap would show
    values = [_balanced(c) for c in store.cells.values()]
    assert len(set(values)) >= 4, values
    table = _report(store, tmp_path)
    assert table.loc["ldam", "balanced"] == _near(_balanced(store.cells["ldam"]))
    assert table.loc["focal", "balanced"] == _near(_balanced(store.cells["focal"]))
    variants = pd.read_csv(tmp_path / "variants.csv", keep_default_na=False)
    shown = {(r.loss, r.variant): r.balanced for r in variants.itertuples()}
    assert set(shown) == {
        ("ldam", "drw_epoch=1"),
        ("ldam", "head=cosine"),
        ("focal", "focal_gamma=1"),
    }
    for (_, name), value in shown.items():
        assert value == _near(_balanced(store.cells[name]))
    runs = pd.read_csv(tmp_path / "runs.csv", keep_default_na=False)
    assert len(runs) == 5 and set(runs["variant"]) == {"", *(k for k in VARIANTS if "=" in k)}
    md = (tmp_path / "report.md").read_text()
    assert "the thesis tables hold the plain variant; 3 other result(s)" in md
    assert "| Tiny CNN | long-tailed | LDAM loss | head=cosine |" in md
    # each variant has its own registered model and champion
    names = {m.name for m in mlflow.MlflowClient().search_registered_models()}
    assert {
        "ltexp-digits-tiny_cnn-ldam-lt",
        "ltexp-digits-tiny_cnn-ldam-lt-drw_epoch=1",
        "ltexp-digits-tiny_cnn-ldam-lt-head=cosine",
        "ltexp-digits-tiny_cnn-focal-lt",
        "ltexp-digits-tiny_cnn-focal-lt-focal_gamma=1",
    } <= names


def test_the_variant_asked_for_fills_the_thesis_tables_where_a_cell_has_it(
    store: Store, tmp_path: Path
) -> None:
    table = _report(store, tmp_path, variant="head=cosine")
    assert table.loc["ldam", "balanced"] == _near(_balanced(store.cells["head=cosine"]))
    assert table.loc["focal", "balanced"] == _near(_balanced(store.cells["focal"]))
    md = (tmp_path / "report.md").read_text()
    assert "tiny_cnn/focal/lt has no head=cosine run: the thesis tables show its plain run" in md
    variants = pd.read_csv(tmp_path / "variants.csv", keep_default_na=False)
    assert ("ldam", "") in {(r.loss, r.variant) for r in variants.itertuples()}


def test_the_same_cell_trained_twice_is_one_row_the_latest_with_a_note(
    store: Store, tmp_path: Path
) -> None:
    again = run_cell(store.cfg.replace(loss="focal", experiment="variants"))
    table = _report(store, tmp_path)
    assert table.loc["focal", "balanced"] == _near(_balanced(again))
    md = (tmp_path / "report.md").read_text()
    assert "digits/tiny_cnn/focal/lt/42: 2 runs, used the latest" in md
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 5
