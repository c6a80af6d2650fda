"""One definition of a cell: the grid's enumeration, the jobs workers get, the names and the
identities all derive from ``ltexp.cells`` and the axes of ``ltexp.config.grid``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ltexp import cells
from ltexp.cli import build_parser, command_config
from ltexp.config import axes, build_config
from ltexp.data.mixing import MIXINGS
from ltexp.data.samplers import SAMPLERS
from ltexp.losses import LOSSES
from ltexp.study import executors
from ltexp.training.decoupling import METHODS

DIGEST = "d" * 64


def _values(options: list, most: int = 2) -> st.SearchStrategy:
    return st.lists(st.sampled_from(options), min_size=1, max_size=most, unique=True)


GRIDS = st.fixed_dictionaries(
    {
        "models": _values(["tiny_cnn", "cifar_resnet8"]),
        "losses": _values(list(LOSSES)),
        "train_splits": _values(["balanced", "lt"]),
        "seeds": _values([1, 7, 42]),
        "samplers": _values(list(SAMPLERS)),
        "study_mixing": _values(list(MIXINGS)),
        "finetunes": _values(
            ["full", "linear", "freeze:1", "freeze:2", "gradual", "bitfit", "lora"]
        ),
        "normalizations": _values(["cifar", "weights"]),
        "study_stage2": _values(["none", *METHODS]),
    }
)
# options that are no axis but change what is trained: every cell carries them too
SETTINGS = st.fixed_dictionaries(
    {},
    optional={
        "head": st.sampled_from(["linear", "cosine"]),
        "drw_epoch": st.integers(0, 3),
        "focal_gamma": st.sampled_from([0.0, 1.0, 2.0]),
        "ldam_max_margin": st.sampled_from([0.3, 0.5]),
        "lr": st.sampled_from([1e-3, 3e-4]),
        "epochs": st.integers(1, 4),
        "mixing_alpha": st.sampled_from([0.4, 1.0]),
        "image_size": st.sampled_from([32, 40]),
        "llrd": st.sampled_from([0.65, 1.0]),
        "lora_rank": st.sampled_from([4, 8]),
        "label_smoothing": st.sampled_from([0.0, 0.1]),
        "warmup_epochs": st.integers(0, 2),
        "gradual_epochs": st.integers(1, 3),
    },
)


PARSER = build_parser()


def _worker_config(job: executors.CellJob, folder: Path):
    """The config the worker process builds from its job, as ``ltexp`` does."""
    path = folder / f"cell{job.index}.yaml"
    path.write_text(job.config)
    argv = [str(path) if a == executors.CONFIG_PLACEHOLDER else a for a in job.args]
    args: argparse.Namespace = PARSER.parse_args(argv)
    return command_config(args)


def _planned(base):
    """What the study plans: each cell's stage 1 once, its config and identity."""
    planned = {}
    for cell in cells.grid_cells(base):
        first = cell.stage1()
        cfg = first.config(base)
        planned.setdefault(first, (cfg, cells.identity(cfg, DIGEST)))
    return planned


@settings(
    max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(grid=GRIDS, extra=SETTINGS)
def test_a_worker_receives_the_whole_cell(grid: dict, extra: dict, tmp_path: Path) -> None:
    base = build_config("demo", {**grid, **extra, "data_run": "run0", "experiment": "wk"})
    planned = _planned(base)
    tasks = [
        executors.CellTask(i, cells.run_name(ident), cfg, None, cells.identity_hash(ident), None)
        for i, (cfg, ident) in enumerate(planned.values(), start=1)
    ]
    jobs = executors.cell_jobs(tasks, "study0")
    assert len(jobs) == len(planned)
    for job, (cell, (_, ident)) in zip(jobs, planned.items(), strict=True):
        worker = _worker_config(job, tmp_path)
        # the worker trains exactly the planned cell: the same identity, every axis's value
        assert cells.identity(worker, DIGEST) == ident
        flat = worker.flat()
        for a in axes():
            if a.stage == 1:
                assert flat[a.key] == cell[a.key], a.key
        assert worker.train.data_run == "run0" and worker.experiment == "wk"
    # one name and one identity per cell; seeds of a cell share its cell key
    identities = [ident for _, ident in planned.values()]
    assert len({cells.run_name(i) for i in identities}) == len(identities)
    assert len({cells.identity_hash(i) for i in identities}) == len(identities)
    by_key = {}
    for cell, (_, ident) in planned.items():
        without_seed = tuple((k, v) for k, v in cell.values if k != "seed")
        by_key.setdefault(cells.cell_key(ident), set()).add(without_seed)
    assert all(len(v) == 1 for v in by_key.values())


@settings(max_examples=30, deadline=None)
@given(grid=GRIDS)
def test_the_grid_is_the_product_of_every_axis(grid: dict) -> None:
    base = build_config("demo", grid)
    found = cells.grid_cells(base)
    expected = 1
    for a in axes():
        expected *= len(grid[a.grid_key])
    assert len(found) == expected == len(set(found))
    for a in axes():
        assert {c[a.key] for c in found} == set(grid[a.grid_key])


def test_what_changes_training_changes_the_identity_and_names_the_variant() -> None:
    base = build_config("thesis", {"loss": "ldam"})
    plain = cells.identity(base, DIGEST)
    assert cells.run_name(plain) == "resnet50-ldam-lt-s42"
    named = {
        "sampler": ("class_balanced", "class_balanced"),
        "mixing": ("remix", "remix"),
        "head": ("cosine", "head=cosine"),
        "drw_epoch": (60, "drw_epoch=60"),
        "ldam_max_margin": (0.3, "ldam_max_margin=0.3"),
    }
    for key, (value, label) in named.items():
        ident = cells.identity(base.replace(**{key: value}), DIGEST)
        assert cells.identity_hash(ident) != cells.identity_hash(plain), key
        assert cells.variant(ident) == label
        assert cells.cell_key(ident) != cells.cell_key(plain)
    # options outside the method change the cell, not its name (the report labels them)
    for key, value in (("epochs", 30), ("lr", 0.01), ("image_size", 112), ("precision", "fp32")):
        ident = cells.identity(base.replace(**{key: value}), DIGEST)
        assert cells.identity_hash(ident) != cells.identity_hash(plain), key
        assert cells.variant(ident) == ""
    # seeds are one cell; a trial or a tuned cell is never the plain one
    seed = cells.identity(base.replace(seed=1), DIGEST)
    assert cells.cell_key(seed) == cells.cell_key(plain)
    assert cells.identity_hash(seed) != cells.identity_hash(plain)
    trial = cells.identity(base, DIGEST, cells.RunKind.TRIAL, trial="search/0")
    assert cells.identity_hash(trial) != cells.identity_hash(plain)
    tuned = cells.identity(base, DIGEST, tuned=True)
    assert cells.variant(tuned) == "tuned" and cells.cell_key(tuned) != cells.cell_key(plain)
    # a second stage adds its options; its run and registered model are named after it
    stage2 = cells.stage2_identity(plain, base.replace(stage2="crt"))
    assert cells.run_name(stage2) == "resnet50-ldam-lt-s42-crt"
    # runtime-only options are the same cell
    runtime = base.replace(device="cpu", num_threads=2, checkpoint_dir="/x", eval_batch_size=7)
    assert cells.identity(runtime, DIGEST) == plain


def test_an_image_folder_is_its_own_data_wherever_cifar_is_kept(tmp_path: Path) -> None:
    one = build_config("thesis", {"dataset": "imagefolder", "data_root": str(tmp_path / "a")})
    two = one.replace(data_root=str(tmp_path / "b"))
    assert cells.data_key(one) != cells.data_key(two)
    cifar = build_config("thesis", {"data_root": str(tmp_path / "a")})
    assert cells.data_key(cifar) == cells.data_key(cifar.replace(data_root=str(tmp_path / "b")))


def test_unknown_grid_values_are_all_named_at_once() -> None:
    from ltexp.errors import ConfigError

    cfg = build_config("demo", {"models": "tiny_cnn,nope", "samplers": "instance,rare"})
    with pytest.raises(ConfigError, match=r"unknown model 'nope'.*unknown sampler 'rare'"):
        cells.grid_cells(cfg)


def test_a_second_stage_trains_its_paper_s_epochs_and_the_default_is_one_cell() -> None:
    """Kang et al.'s released configs: cRT 10 epochs, LWS 5 (config/*/cls_lws.yaml)."""
    base = build_config("demo")
    plain = cells.identity(base, "d" * 64)
    crt = cells.stage2_identity(plain, base.replace(stage2="crt"))
    lws = cells.stage2_identity(plain, base.replace(stage2="lws"))
    assert crt["stage2_epochs"] == 10 and lws["stage2_epochs"] == 5
    # the default and the same number given are one cell, named without the option
    given_5 = cells.stage2_identity(plain, base.replace(stage2="lws", stage2_epochs=5))
    assert cells.identity_hash(given_5) == cells.identity_hash(lws)
    assert cells.variant(lws) == "lws"
    other = cells.stage2_identity(plain, base.replace(stage2="lws", stage2_epochs=10))
    assert cells.variant(other) == "lws+stage2_epochs=10"
    assert cells.identity_hash(other) != cells.identity_hash(lws)
