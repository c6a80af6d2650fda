"""The CUDA-only paths (ltexp/accelerator.py): on a CPU each takes its plain fallback, and no
other module calls a CUDA-only API itself."""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ltexp import accelerator
from ltexp.data.pipeline import TensorBatches

LTEXP = Path(accelerator.__file__).resolve().parent
CPU = torch.device("cpu")


def test_on_a_cpu_every_path_is_the_plain_one() -> None:
    assert accelerator.optimizer_options(CPU) == {}
    assert accelerator.process_group_backend(CPU) == "gloo"
    assert accelerator.copy_stream(CPU) is None
    x = torch.arange(12, dtype=torch.uint8).reshape(1, 2, 2, 3)
    assert accelerator.host_buffer(x, CPU) is x  # not pinned: no GPU to copy to
    assert accelerator.to_device(x, CPU) is x
    batches = [torch.zeros(2), torch.ones(2)]
    assert list(accelerator.prefetched(iter(batches), CPU, None)) == batches
    # and the CUDA answers, which need no GPU to be named
    assert accelerator.optimizer_options("cuda") == {"fused": True}
    assert accelerator.process_group_backend("cuda:1") == "nccl"


def test_prefetch_gathers_one_batch_at_a_time() -> None:
    """Streaming exists for sets larger than the device: it never gathers the epoch at once."""
    gathered: list[int] = []

    def host():
        for i in range(3):
            gathered.append(i)
            yield torch.full((1,), i)

    stream = accelerator.prefetched(host(), CPU, None)
    assert next(stream).item() == 0 and gathered == [0]


def test_a_streamed_epoch_equals_a_resident_one_on_the_cpu() -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 8, 8, 3), dtype=torch.uint8, generator=g).numpy()
    labels = torch.randint(0, 4, (40,), generator=g).numpy()
    common = {"train": True, "seed": 3, "image_size": 8}
    resident = TensorBatches(images, labels, 16, **common)
    streamed = TensorBatches(images, labels, 16, max_resident_bytes=0, **common)
    assert streamed.streamed and not resident.streamed
    for (a, ya), (b, yb) in zip(resident.epoch(1), streamed.epoch(1), strict=True):
        assert torch.equal(a, b) and torch.equal(ya, yb)


def test_no_other_module_calls_a_cuda_only_api() -> None:
    """fused kernels, pinned memory, non-blocking copies, side streams, NCCL: only here."""
    cuda_only = re.compile(
        r"pin_memory\(|non_blocking=True|torch\.cuda\.Stream|\"nccl\"|[\"']fused[\"']"
    )
    offenders = [
        str(p.relative_to(LTEXP))
        for p in LTEXP.rglob("*.py")
        if p.name not in ("accelerator.py", "bench.py") and cuda_only.search(p.read_text())
    ]
    assert offenders == []
