"""Resume checkpoints: atomic writes, code refused, every part checked before use."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch

from ltexp.checkpoint import LAST, ResumeState, load_checkpoint, rng_state
from ltexp.errors import HostError, TrainingError


def _state(epoch: int = 2, **changes: object) -> ResumeState:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    values = {
        "epoch": epoch,
        "model": model.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "best_val_acc1": 0.5,
        "best_epoch": 1,
        "history": [{"epoch": e, "val_acc1": 0.5} for e in range(1, epoch + 1)],
        "rng": rng_state(),
        "config_hash": "abc",
    }
    values.update(changes)
    return ResumeState(**values)


def _fresh() -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    return model, opt, torch.optim.lr_scheduler.StepLR(opt, 1)


def test_round_trip_restores_weights_and_rng(tmp_path: Path) -> None:
    path = tmp_path / LAST
    state = _state()
    state.save(path)
    expected_draw = torch.rand(3)  # what the RNG gives right after the state was taken
    loaded = ResumeState.load(path, config_hash="abc", epochs=5)
    model, opt, sched = _fresh()
    loaded.restore_into(path, model, opt, sched)
    assert torch.equal(model.weight, state.model["weight"])
    assert torch.equal(torch.rand(3), expected_draw)
    assert loaded.history == state.history and loaded.epoch == 2


@pytest.mark.parametrize(
    "changes,message",
    [
        # a tampered epoch (a history of a million epochs would take seconds to write)
        ({"epoch": 1_000_000, "history": [{"epoch": 1, "val_acc1": 0.5}]}, "outside 1..5"),
        ({"epoch": 0}, "outside 1..5"),
        ({"best_epoch": 3}, "best_epoch 3 is outside 0..2"),
        ({"history": [{"epoch": 1}]}, "history does not hold epochs 1..2"),
        ({"rng": {"python": 1}}, "rng lacks"),
        ({"model": {"weight": [1, 2]}}, "not tensors"),
        ({"config_hash": "other"}, "belongs to another config"),
    ],
)
def test_a_checkpoint_that_does_not_fit_is_refused_naming_the_way_out(
    tmp_path: Path, changes: dict, message: str
) -> None:
    path = tmp_path / "run" / LAST
    _state(**changes).save(path)
    with pytest.raises(TrainingError, match=message) as err:
        ResumeState.load(path, config_hash="abc", epochs=5)
    assert "resume=false" in str(err.value) and str(path.parent) in str(err.value)


def test_missing_keys_wrong_shapes_and_broken_rng_are_refused(tmp_path: Path) -> None:
    path = tmp_path / LAST
    raw = {k: v for k, v in vars(_state()).items() if k != "optimizer"}
    torch.save(raw, path)
    with pytest.raises(TrainingError, match=r"lacks \['optimizer'\]"):
        ResumeState.load(path, config_hash="abc", epochs=5)
    bad_shape = _state(model={"weight": torch.zeros(5, 5), "bias": torch.zeros(2)})
    with pytest.raises(TrainingError, match="does not fit this run"):
        bad_shape.restore_into(path, *_fresh())
    broken_rng = _state(rng={"python": (3, (1,), None), "numpy": None, "torch": torch.zeros(1)})
    with pytest.raises(TrainingError, match="does not fit this run"):
        broken_rng.restore_into(path, *_fresh())


def test_checkpoint_that_carries_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    path = tmp_path / LAST
    with open(path, "wb") as f:
        pickle.dump({"epoch": 1, "model": Evil()}, f)
    with pytest.raises(TrainingError, match="refused"):
        load_checkpoint(path)
    assert not marker.exists()
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(TrainingError, match="corrupt"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "failure",
    [
        OSError(28, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0"),
    ],
)
def test_full_disk_keeps_the_previous_checkpoint_and_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: Exception
) -> None:
    path = tmp_path / LAST
    _state(epoch=1).save(path)

    def disk_full(*a, **k):
        raise failure

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(HostError, match=r"No space left.*previous checkpoint is intact"):
        _state(epoch=2).save(path)
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert [p.name for p in tmp_path.iterdir()] == [LAST]  # no temporary file left behind
