"""Data-parallel training across processes (``torchrun --nproc_per_node=N``).

Every rank trains on its shard of each epoch (``TensorBatches(rank=, world_size=)``) with
``DistributedDataParallel``; only rank 0 talks to MLflow and writes checkpoints. Backend: NCCL on
GPUs, gloo on CPUs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from ltexp import accelerator


@dataclass(frozen=True)
class DistContext:
    """This process's place in a data-parallel group (world_size 1 = not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls) -> DistContext:
        """Read torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``."""
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(ctx: DistContext, device: torch.device) -> None:
    """Join the process group (once per process)."""
    if ctx.enabled and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(
            accelerator.process_group_backend(device), rank=ctx.rank, world_size=ctx.world_size
        )


def device_for(ctx: DistContext, device: torch.device) -> torch.device:
    """One GPU per rank (``cuda:LOCAL_RANK``) when training on CUDA."""
    if ctx.enabled and device.type == "cuda" and device.index is None:
        return torch.device("cuda", ctx.local_rank)
    return device


def broadcast(obj: Any, ctx: DistContext) -> Any:
    """Rank 0's ``obj`` on every rank (small Python objects: run ids, manifests, indices)."""
    if not ctx.enabled:
        return obj
    box = [obj if ctx.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place (a no-op outside a process group)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def is_distributed() -> bool:
    """Inside a process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
