"""Every device option runs a whole cell on the CPU: trained, registered, loaded, evaluated.

The CUDA-only paths (pinned memory, non-blocking copies, fused Adam, NCCL) are not exercised
here; docs/performance.md lists them as unverified until they run on a GPU.
"""

from __future__ import annotations

import pytest
import torch

import ltexp
from ltexp.cli import main
from tests.conftest import step_counts, tiny_args

pytestmark = pytest.mark.slow

OPTIONS = {
    "bf16": {"precision": "bf16"},
    "channels_last": {"channels_last": "true"},
    "compile (inductor on the CPU)": {"compile": "true"},
    "streamed from host memory": {"data_on_device_gb": 0},
}


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS)
def test_a_device_option_trains_a_whole_cell(tmp_path, tracking: str, capsys, options) -> None:
    args = tiny_args(tmp_path, epochs=2, train_split="lt", **options)
    assert main(["train", *args]) == 0
    out = capsys.readouterr().out
    assert "train run:" in out, out
    assert step_counts(tracking) == {"prepare_data": 1, "train": 1, "evaluate": 1}
    uri = next(w for w in out.split() if w.startswith("models:/"))
    model = ltexp.load_model(uri)
    with torch.no_grad():
        logits = model(torch.zeros(4, 3, 32, 32))
    assert logits.shape == (4, 10) and torch.isfinite(logits).all()
