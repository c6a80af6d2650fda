"""The grid's axes, declared once: what a cell of the study varies.

Each :class:`Axis` names the option one cell takes (``sampler``) and the study option that lists
the grid's values (``samplers``). The study options are generated from these declarations
(``ltexp/config/sections.py``), and everything else derives from them too: the enumeration of
cells, their run names and registered-model names, the jobs handed to workers, the report's
grouping (``ltexp/cells.py``). Adding an axis is one entry here plus the behaviour of its cell
option (CONTRIBUTING.md, "Adding a grid axis").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Axis:
    """One axis of the grid.

    Attributes:
        key: the option one cell takes (a config key: ``sampler``).
        grid_key: the study option listing the grid's values (``samplers``; ``-P samplers=…``).
        title: what the report calls it.
        help: one line for ``--help`` of the study option.
        default: the thesis's grid values, in the thesis's order (the report's order too).
        plain: the value every thesis cell has; a cell with another value is a variant and
            names it (``resnet50-ce-lt-s42-class_balanced``). None: the axis has no plain value,
            every cell names its own (model, loss, training set, seed).
        item_type: the type of one value.
        registry: the registry whose names the values take (``--help`` lists them, the grid
            checks them).
        stage: 1 when the value changes what a train run computes; 2 when it is applied to a
            trained cell's model afterwards (a decouple run).
        options: the options that belong to the axis's values (a second stage's epochs): a
            cell that sets them is still that value of the axis, named with them.
        name_format: how a variant names a value off the plain one (``norm_{}``: a bare
            ``weights`` would not say what it is); a ``:`` in the value is dropped
            (``freeze:2`` is ``freeze2``: registered-model names take no colon).
    """

    key: str
    grid_key: str
    title: str
    help: str
    default: tuple[Any, ...]
    plain: Any = None
    item_type: type = str
    registry: str = ""
    stage: int = 1
    options: tuple[str, ...] = ()
    name_format: str = "{}"

    def named(self, value: Any) -> str:
        """The value as a variant names it."""
        return self.name_format.format(str(value).replace(":", ""))


AXES: tuple[Axis, ...] = (  # read with axes(): register_axis() adds to it
    Axis(
        "model",
        "models",
        "backbone",
        "backbones of the grid",
        ("resnet50", "mobilenet_v2", "vit_b16", "convnext_base"),
        registry="models",
    ),
    Axis(
        "loss",
        "losses",
        "loss",
        "losses of the grid (the thesis's table order)",
        ("ce", "focal", "wce", "cb", "bs", "seql", "ldam"),
        registry="losses",
    ),
    Axis(
        "train_split",
        "train_splits",
        "training set",
        "training sets of the grid",
        ("balanced", "lt"),
        registry="training_sets",
    ),
    Axis("seed", "seeds", "seed", "training seeds of the grid", (42,), item_type=int),
    Axis(
        "sampler",
        "samplers",
        "sampler",
        "samplers of the grid",
        ("instance",),
        plain="instance",
        registry="samplers",
    ),
    Axis(
        "mixing",
        "study_mixing",
        "batch mixing",
        "batch mixings of the grid",
        ("none",),
        plain="none",
        registry="mixings",
    ),
    Axis(
        "finetune",
        "finetunes",
        "fine-tuning",
        "how much of each backbone the grid's cells train (full, linear, freeze:<k>, gradual, "
        "bitfit, lora)",
        ("full",),
        plain="full",
        registry="finetunes",
    ),
    Axis(
        "normalize",
        "normalizations",
        "normalisation",
        "input normalisations of the grid: cifar (the protocol) or weights (the weights' own)",
        ("cifar",),
        plain="cifar",
        name_format="norm_{}",
    ),
    Axis(
        "stage2",
        "study_stage2",
        "second stage",
        "second stages of the grid: none (the trained model) or a decoupling method (crt, "
        "tau_norm, lws), applied to the cell's stage-1 model",
        ("none",),
        plain="none",
        registry="second_stages",
        stage=2,
        options=("stage2_epochs", "stage2_lr", "stage2_tau", "stage2_tau_form"),
    ),
)


def register_axis(axis: Axis) -> Axis:
    """Add an axis to the grid (a plugin, or a test's throwaway axis): its study option
    ``axis.grid_key`` exists from then on, and every cell takes a value of it."""
    global AXES
    if any(a.key == axis.key or a.grid_key == axis.grid_key for a in AXES):
        raise ValueError(f"axis {axis.key!r} ({axis.grid_key}) is already declared")
    AXES = (*AXES, axis)
    return axis


def unregister_axis(key: str) -> None:
    """Remove an axis added with :func:`register_axis`."""
    global AXES
    AXES = tuple(a for a in AXES if a.key != key)


def axes() -> tuple[Axis, ...]:
    """Every axis, in declaration order (read through this, not the module global, so that a
    registered axis is seen)."""
    return AXES


def axis(key: str) -> Axis:
    """The axis whose cell option is ``key``."""
    return next(a for a in AXES if a.key == key)


def variant_axes() -> tuple[Axis, ...]:
    """The axes a variant names (those with a plain value), in declaration order."""
    return tuple(a for a in AXES if a.plain is not None)
