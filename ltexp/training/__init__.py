"""Training: the loop (plain PyTorch, no MLflow), what a run is built from, and the session.

- :mod:`ltexp.training.loop`: :func:`fit`, :func:`train_one_epoch`, :func:`validate`,
  :func:`predict`.
- :mod:`ltexp.training.setup`: :func:`resolve_train` (a request checked before anything
  exists), device, precision, optimizer and schedule.
- :mod:`ltexp.training.session`: :func:`build_session` and the data-parallel replicas.
"""

from ltexp.training.loop import (
    EpochResult,
    EpochStats,
    TrainResult,
    ValidationResult,
    fit,
    predict,
    train_one_epoch,
    validate,
)
from ltexp.training.setup import (
    TrainSpec,
    autocast,
    autocast_dtype,
    make_optimizer,
    make_scheduler,
    parse_pretrained,
    resolve_device,
    resolve_image_size,
    resolve_train,
    seed_everything,
    set_deterministic,
)

__all__ = [
    "EpochResult",
    "EpochStats",
    "TrainResult",
    "TrainSpec",
    "ValidationResult",
    "autocast",
    "autocast_dtype",
    "fit",
    "make_optimizer",
    "make_scheduler",
    "parse_pretrained",
    "predict",
    "resolve_device",
    "resolve_image_size",
    "resolve_train",
    "seed_everything",
    "set_deterministic",
    "train_one_epoch",
    "validate",
]
