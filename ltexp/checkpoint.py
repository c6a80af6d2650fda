"""Resume checkpoints: written atomically, read back without unpickling code.

A checkpoint is a dict of tensors and plain Python values (the contract for resume):
``epoch`` (last finished, 1-based), ``model``, ``optimizer``, ``scheduler`` (state dicts),
``best_val_acc1``, ``best_epoch``, ``history`` (one dict of metrics per finished epoch), ``rng``
(Python, NumPy, torch CPU and CUDA states) and ``config_hash`` (the run it belongs to). The best
model's weights live beside it in ``best.safetensors``.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ltexp.errors import TrainingError

LAST = "last.pt"
BEST = "best.safetensors"


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename over ``path``: a crash or a full disk leaves the
    previous file intact, never a half-written one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with _suppress():
            os.unlink(tmp)
        raise
    with _suppress():  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class _suppress:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> bool:
        return True


def save_checkpoint(state: dict[str, Any], path: Path) -> None:
    """Write a resume checkpoint atomically."""
    try:
        atomic_write(path, lambda tmp: torch.save(state, tmp))
    except OSError as e:
        raise TrainingError(
            f"cannot write checkpoint {str(path)!r} ({e.strerror or e}); the "
            f"previous checkpoint is intact"
        ) from None


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``: a file that carries code is refused."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means the file cannot be trusted
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TrainingError(
            f"checkpoint {str(path)!r} is corrupt or not a plain ltexp "
            f"checkpoint and was refused: {first[:200]}"
        ) from None
    if not isinstance(state, dict) or "epoch" not in state or "model" not in state:
        raise TrainingError(f"checkpoint {str(path)!r} is not an ltexp checkpoint")
    return state


def save_weights(state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """Write model weights as safetensors (tensors only, nothing executable), atomically."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    try:
        atomic_write(path, lambda tmp: save_file(tensors, tmp))
    except OSError as e:
        raise TrainingError(f"cannot write weights {str(path)!r} ({e.strerror or e})") from None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read safetensors weights."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as e:  # noqa: BLE001
        raise TrainingError(f"weights {str(path)!r} are corrupt ({e})") from None


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states, as tensors and plain values."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore states saved by :func:`rng_state`."""
    random.setstate(_tuples(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(value: Any) -> Any:
    # torch.load may give lists where tuples were saved; random.setstate wants tuples.
    if isinstance(value, list | tuple):
        return tuple(_tuples(v) for v in value)
    return value
