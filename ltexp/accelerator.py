"""The CUDA-only code paths, in one place, each with the CPU fallback that ltexp's CI runs.

ltexp's tests run on CPUs; what only a GPU executes is kept here, small, so that it is one file
to check on a GPU (scripts/gpu_check.py) and docs/performance.md can list it as unverified until
then: fused optimizer kernels, pinned host memory, non-blocking copies on a side stream, and
NCCL. On a CPU each function returns the plain path (no fusing, no pinning, a synchronous
generator, gloo), and the tests check exactly that.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator

import torch
from torch import Tensor


def is_cuda(device: torch.device | str) -> bool:
    return torch.device(device).type == "cuda"


def optimizer_options(device: torch.device | str) -> dict[str, bool]:
    """Keyword arguments of torch's Adam/AdamW/SGD: fused kernels on CUDA (one launch for
    every parameter), none on a CPU."""
    return {"fused": True} if is_cuda(device) else {}


def process_group_backend(device: torch.device | str) -> str:
    """NCCL between GPUs, gloo between CPU processes."""
    return "nccl" if is_cuda(device) else "gloo"


def host_buffer(x: Tensor, device: torch.device | str) -> Tensor:
    """``x`` kept on the host for copies to ``device``: pinned (page-locked, so a copy can run
    asynchronously) when ``device`` is a GPU, as it is otherwise."""
    return x.pin_memory() if is_cuda(device) else x


def copy_stream(device: torch.device | str) -> torch.cuda.Stream | None:
    """A side stream for host-to-GPU copies; None on a CPU (nothing to overlap)."""
    return torch.cuda.Stream(torch.device(device)) if is_cuda(device) else None


def to_device(x: Tensor, device: torch.device | str) -> Tensor:
    """``x`` on ``device``; asynchronous from pinned memory to a GPU."""
    return x.to(device, non_blocking=is_cuda(device))


def prefetched(
    host_batches: Iterable[Tensor], device: torch.device | str, stream: torch.cuda.Stream | None
) -> Iterator[Tensor]:
    """Host batches on ``device``, each copied on ``stream`` while the one before trains.

    Without a stream (a CPU) the host batches are the device's and are yielded as they come.
    """
    if stream is None:
        yield from host_batches
        return
    device = torch.device(device)
    pending = None
    for host in itertools.chain(host_batches, [None]):  # one batch gathered at a time
        ready = pending
        if host is not None:
            host = host.pin_memory()
            with torch.cuda.stream(stream):
                copied = host.to(device, non_blocking=True)
                done = torch.cuda.Event()
                done.record(stream)
            pending = (copied, done, host)
        if ready is not None:
            copied, done, _host = ready  # the pinned source lives until its copy is done
            torch.cuda.current_stream(device).wait_event(done)
            copied.record_stream(torch.cuda.current_stream(device))
            yield copied
