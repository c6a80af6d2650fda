"""Memory checked before it is allocated: a request that cannot fit is refused with one line that
states the estimate and the limit, instead of an out-of-memory crash minutes later."""

from __future__ import annotations

import socket
import urllib.parse

import psutil

from ltexp.errors import ConfigError

GIB = 1024**3


def free_memory(device: str = "cpu") -> int:
    """Bytes free on ``device`` now: host RAM for ``cpu``, the GPU's free memory for CUDA."""
    if device.startswith("cuda"):
        # torch (1.4 s) only for a GPU: ltexp.data imports this module and stays NumPy
        import torch

        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    return int(psutil.virtual_memory().available)


def check_fits(needed: float, what: str, advice: str, device: str = "cpu") -> None:
    """Refuse ``what`` when its estimated ``needed`` bytes exceed what ``device`` has free.

    Raises:
        ConfigError: "<what> needs about X GiB, more than the Y GiB free on <device>; <advice>".
    """
    free = free_memory(device)
    if needed > free:
        raise ConfigError(
            f"{what} needs about {needed / GIB:,.1f} GiB, more than the {free / GIB:,.1f} GiB "
            f"free on {device}; {advice}"
        )


def image_batch_bytes(batch: int, side: int, copies: int = 4) -> float:
    """A float32 batch of ``batch`` RGB images of ``side``², times the copies augmentation and
    normalisation make of it (a lower bound: the model's activations come on top)."""
    return float(batch) * 3 * side * side * 4 * copies


def resident_budget(gib: float | None, device: object) -> int | None:
    """Bytes of device memory a split may take before it is streamed from host memory: ``gib``
    when given; on a GPU, half its free memory (the model, activations and optimizer need the
    rest); on the CPU no limit (host and device are the same memory)."""
    if gib is not None:
        return int(gib * GIB)
    if getattr(device, "type", str(device)) != "cuda":
        return None
    return free_memory(str(device)) // 2


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether a TCP connection to ``url``'s host opens within ``timeout`` seconds: one probe
    before a download, instead of a client's minute of retries."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False
