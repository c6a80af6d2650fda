"""Resume checkpoints: the contract of a resumable run, written atomically, read back checked.

A run's checkpoint folder holds ``last.pt`` (a :class:`ResumeState`, saved as a dict of tensors
and plain values, read with ``weights_only=True`` so a file that carries code is refused),
``best.safetensors`` (the best-validation weights) and ``.lock`` (one process per run). This
module is the only one that writes or reads them.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import random
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from ltexp.errors import HostError, TrackingError, TrainingError

LAST = "last.pt"
BEST = "best.safetensors"
LOCK = ".lock"


@dataclass
class ResumeState:
    """Everything a run needs to continue after its last finished epoch (the resume contract).

    Attributes:
        epoch: the last finished epoch (1-based).
        model, optimizer, scheduler: their ``state_dict()``.
        best_val_acc1, best_epoch: the best validation top-1 so far and its epoch.
        history: one dict of metrics per finished epoch (``epoch`` included), in order; the
            metrics are re-sent from here if the tracking server lost them.
        rng: Python, NumPy and torch RNG states (:func:`rng_state`).
        config_hash: the identity of the run it belongs to.
    """

    epoch: int
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    best_val_acc1: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    rng: dict[str, Any] = field(default_factory=dict)
    config_hash: str = ""

    def save(self, path: Path) -> None:
        """Write atomically: a crash or a full disk leaves the previous checkpoint intact."""
        try:
            atomic_write(path, lambda tmp: torch.save(asdict(self), tmp))
        except (OSError, RuntimeError) as e:  # torch reports a full disk as RuntimeError
            raise HostError(
                f"cannot write checkpoint {str(path)!r} ({_reason(e)}); the previous "
                f"checkpoint is intact and the same command resumes from it"
            ) from None

    @classmethod
    def load(cls, path: Path, *, config_hash: str, epochs: int) -> ResumeState:
        """Read and check a checkpoint of the run with ``config_hash`` and ``epochs`` epochs.

        Every key, type and range is checked here; shapes are checked when the state is loaded
        into the model (:meth:`restore_into`).

        Raises:
            TrainingError: unreadable, of another run, or not an ltexp checkpoint; the message
                names the folder and the way out.
        """
        raw = load_checkpoint(path)
        way_out = _way_out(path)
        names = [f.name for f in fields(cls)]
        missing = [n for n in names if n not in raw]
        if missing:
            raise TrainingError(f"checkpoint {str(path)!r} lacks {missing}; {way_out}")
        if raw["config_hash"] != config_hash:
            raise TrainingError(
                f"checkpoint {str(path)!r} belongs to another config (hash "
                f"{str(raw['config_hash'])[:16]} ≠ {config_hash}); {way_out}"
            )
        state = cls(**{n: raw[n] for n in names})
        problem = state._problem(epochs)
        if problem:
            raise TrainingError(f"checkpoint {str(path)!r} is not usable: {problem}; {way_out}")
        return state

    def _problem(self, epochs: int) -> str:
        if not isinstance(self.epoch, int) or not 1 <= self.epoch <= epochs:
            return f"epoch {self.epoch!r} is outside 1..{epochs}"
        if not isinstance(self.best_epoch, int) or not 0 <= self.best_epoch <= self.epoch:
            return f"best_epoch {self.best_epoch!r} is outside 0..{self.epoch}"
        if not isinstance(self.best_val_acc1, float) or math.isnan(self.best_val_acc1):
            return f"best_val_acc1 {self.best_val_acc1!r} is not a number"
        for name in ("model", "optimizer", "scheduler", "rng"):
            if not isinstance(getattr(self, name), dict):
                return f"{name} is not a dict"
        if not all(isinstance(v, torch.Tensor) for v in self.model.values()):
            return "model holds values that are not tensors"
        if not isinstance(self.history, list) or [
            row.get("epoch") if isinstance(row, dict) else None for row in self.history
        ] != list(range(1, self.epoch + 1)):
            return f"history does not hold epochs 1..{self.epoch}"
        if set(self.rng) < {"python", "numpy", "torch"}:
            return "rng lacks the python, numpy or torch state"
        return ""

    def restore_into(
        self,
        path: Path,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> None:
        """Load the state into a freshly built model, optimizer and schedule; seed the RNGs.

        Raises:
            TrainingError: a shape, key or RNG state that does not fit (naming the way out).
        """
        try:
            model.load_state_dict(self.model)
            optimizer.load_state_dict(self.optimizer)
            scheduler.load_state_dict(self.scheduler)
            set_rng_state(self.rng)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise TrainingError(
                f"checkpoint {str(path)!r} does not fit this run ({first}); {_way_out(path)}"
            ) from None


def _way_out(path: Path) -> str:
    return (
        f"delete the folder {str(path.parent)!r} to start this run's training over, or start a "
        f"new run with resume=false"
    )


def _reason(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    text = str(e)
    if "No space left" in text or "enforce fail" in text:
        return "No space left on device"
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return first[:160]


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
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint file with ``weights_only=True``: a file that carries code is refused."""
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
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    try:
        atomic_write(path, lambda tmp: save_file(tensors, tmp))
    except Exception as e:  # noqa: BLE001 - safetensors reports a full disk as its own error
        raise HostError(f"cannot write weights {str(path)!r} ({_reason(e)})") from None


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """Read safetensors weights."""
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


def checkpoint_folder(checkpoint_dir: str | Path, run_id: str) -> Path:
    """Where the checkpoints of run ``run_id`` live."""
    return Path(checkpoint_dir).expanduser() / run_id


def folder_problem(path: str | Path) -> str:
    """Why ``path`` could not be a folder this process writes (``""``: it could), found by
    making it and a file in it and removing what was made: ``ltexp plan`` refuses what
    :func:`ensure_folder` would, and leaves nothing behind (``/proc/x``: the kernel refuses a
    file where permissions alone would allow one)."""
    folder = Path(path).expanduser()
    if folder.exists() and not folder.is_dir():
        return "Not a directory"
    made = []
    probe = folder
    while not probe.exists() and probe != probe.parent:
        made.append(probe)
        probe = probe.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError as e:
        return e.strerror or str(e)
    finally:
        for created in made:  # innermost first
            with contextlib.suppress(OSError):
                created.rmdir()
    return ""


def ensure_folder(path: str | Path) -> Path:
    """``path`` as a folder this process can write (created if missing), or one clear line."""
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(13, "Permission denied")
    except OSError as e:
        raise TrainingError(
            f"checkpoint_dir {str(folder)!r} cannot be a writable folder ({e.strerror or e}); "
            f"set checkpoint_dir to one"
        ) from None
    return folder


@contextlib.contextmanager
def exclusive(folder: Path) -> Iterator[None]:
    """Hold the run's folder for this process: a second one training the same run is refused,
    not interleaved."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise TrainingError(
            f"cannot create the checkpoint folder {str(folder)!r} "
            f"({e.strerror or e}); set checkpoint_dir to a writable folder"
        ) from None
    with open(folder / LOCK, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TrackingError(f"another process is training run {folder.name}") from None
        yield
