"""Field declarations: what one configurable value is (its type, checks, help, what it changes),
and the one converter that YAML values and command-line strings share."""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass, field
from typing import Any

from ltexp.errors import ConfigError, unknown_name_error


def _opt(
    default: Any,
    help: str,
    *,
    choices: tuple[str, ...] = (),
    low: float | None = None,
    low_open: bool = False,
    high: float | None = None,
    high_open: bool = False,
    factory: Any = None,
    runtime: bool = False,
    method: bool = False,
    registry: str = "",
    commands: tuple[str, ...] = (),
    also_under: str = "",
    key: str = "",
    added: str = "",
    applies_when: tuple[str, str] = ("", ""),
) -> Any:
    """A config field: default, one-line help, checks, and what the field is.

    Args:
        runtime: the value changes how a run executes (device, threads, folders), never what it
            computes; identity hashes leave it out, so runs that differ only here are the same.
        method: the value is part of a cell's method (head, DRW, a mixing's parameters): a
            cell whose value is off the default names it (``ltexp.cells.variant``).
        registry: the registry whose names the value takes; the help lists them.
        commands: the commands that take the field (default: its section's commands).
        also_under: a YAML section where presets written before the field moved may still give it.
        key: the flat name (``-P key=…``, ``--key``) when the field's own name is another
            section's key (``study.mixing`` is ``study_mixing``; ``mixing`` is the cell's).
        added: the ltexp version that added an option of what a run computes. Runs recorded
            before it have no value for it, so a cell's identity leaves it out while it is at
            its default: those runs stay the same cells, never trained again.
        applies_when: ``(key, value)``: the option changes training only when option ``key``
            has ``value`` (``lora_rank`` with ``finetune=lora``); otherwise a cell's identity
            leaves it out, so a value that changes nothing makes no other cell.
    """
    meta = {
        "help": help,
        "choices": choices,
        "low": low,
        "low_open": low_open,
        "high": high,
        "high_open": high_open,
        "runtime": runtime,
        "method": method,
        "registry": registry,
        "commands": commands,
        "also_under": also_under,
        "key": key,
        "added": added,
        "applies_when": applies_when,
    }
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class FieldSpec:
    """One configurable value: where it lives, its type, its checks, its help, what it is."""

    key: str
    section: str
    name: str
    type: Any
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    low: float | None = None
    low_open: bool = False
    high: float | None = None
    high_open: bool = False
    runtime: bool = False
    registry: str = ""
    commands: tuple[str, ...] = ()
    also_under: str = ""
    method: bool = False
    owner: str = ""  # the loss or dataset of a registry-declared field; the axis of a grid option
    added: str = ""  # the version that added it: left out of an identity at its default
    applies_when: tuple[str, str] = ("", "")  # (key, value) it matters under; see _opt

    def help_text(self) -> str:
        """The help, with the registry's names when the field takes one."""
        if not self.registry:
            return self.help
        return f"{self.help} ({', '.join(registry_names(self.registry))})"


# the second stages of Kang et al. 2020 (ltexp/training/decoupling.py implements them), the
# registry of the ``stage2`` option
STAGE2_METHODS = ("crt", "tau_norm", "lws")


def loss_key(loss: str, hparam: str) -> str:
    """The flat key of a loss's hyper-parameter: ``focal_gamma`` (``--focal-gamma``)."""
    return f"{loss}_{hparam}"


def registry_names(registry: str) -> list[str]:
    """The names a registry holds (``models`` adds the ``timm:<name>`` form)."""
    # each registry is imported when it is asked for: ltexp.models and ltexp.losses import
    # torch (1.4 s), which ``ltexp --help`` and an option's error need not wait for
    if registry == "models":
        from ltexp.models import list_models

        return [*list_models(), "timm:<name>"]
    if registry == "losses":
        from ltexp.losses import list_losses

        return list_losses()
    if registry == "datasets":
        from ltexp.data import list_datasets

        return list_datasets()
    if registry == "profiles":
        from ltexp.data import PROFILES

        return list(PROFILES)
    if registry == "samplers":
        from ltexp.data.samplers import SAMPLERS

        return list(SAMPLERS)
    if registry == "mixings":
        from ltexp.data.mixing import MIXINGS

        return list(MIXINGS)
    if registry == "training_sets":
        from ltexp.data.splits import TRAINING_SETS

        return list(TRAINING_SETS)
    if registry == "finetunes":
        from ltexp.models.finetune import FINETUNE_MODES

        return list(FINETUNE_MODES)
    if registry == "second_stages":
        return ["none", *STAGE2_METHODS]
    raise ValueError(f"unknown registry {registry!r}")  # pragma: no cover - a bug here


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def convert(spec: FieldSpec, value: Any) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to the field's type and check its range."""
    try:
        out = _convert_type(spec.type, value)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{spec.key}: {e}") from None
    _check_range(spec, out)
    return out


def _convert_type(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):  # X | None
        inner = next(a for a in args if a is not type(None))
        if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")):
            return None
        return _convert_type(inner, value)
    if origin is list:
        items = _split_list(value)
        return [_convert_type(args[0], v) for v in items]
    if origin is tuple:
        items = _split_list(value)
        if len(items) != len(args):
            raise ValueError(f"expected {len(args)} comma-separated values, got {value!r}")
        return tuple(_convert_type(a, v) for a, v in zip(args, items, strict=True))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ValueError(f"expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ValueError(f"expected an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            text = value.strip()
            digits = text.removeprefix("-").removeprefix("+")
            if len(digits) > 30:  # Python refuses to read 4,300 digits and more
                raise ValueError(f"expected an integer, got {len(text)} characters")
            if digits.isascii() and digits.isdigit():  # '²' is a digit to str.isdigit
                return int(text)
        raise ValueError(f"expected an integer, got {_shown(value)}")
    if tp is float:
        if isinstance(value, bool):
            raise ValueError(f"expected a number, got {value!r}")
        if isinstance(value, int | float):
            out = float(value)
        elif isinstance(value, str):
            try:
                out = float(value.strip())
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
        else:
            raise ValueError(f"expected a number, got {value!r}")
        if out != out or out in (float("inf"), float("-inf")):
            raise ValueError(f"expected a finite number, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected a string, got {value!r}")
    raise TypeError(f"unsupported config type {tp!r}")  # pragma: no cover - a bug in this module


def _shown(value: Any) -> str:
    """``repr`` of a value in an error, cut to 40 characters."""
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}…"


def _split_list(value: Any) -> list[Any]:
    if isinstance(value, list | tuple):
        return list(value)
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [value]
    raise ValueError(f"expected a list or comma-separated values, got {value!r}")


def _check_range(spec: FieldSpec, value: Any) -> None:
    values = value if isinstance(value, list | tuple) else [value]
    for v in values:
        if v is None:
            continue
        if spec.choices and v not in spec.choices:
            raise unknown_name_error(f"{spec.key} value", v, spec.choices)
        if isinstance(v, int | float) and not isinstance(v, bool):
            if spec.low is not None and (v < spec.low or (spec.low_open and v == spec.low)):
                op = ">" if spec.low_open else ">="
                raise ConfigError(
                    f"{spec.key} must be {op} {_number(spec.low, True)}, got {_number(v)}"
                )
            if spec.high is not None and (v > spec.high or (spec.high_open and v == spec.high)):
                op = "<" if spec.high_open else "<="
                raise ConfigError(
                    f"{spec.key} must be {op} {_number(spec.high, True)}, got {_number(v)}"
                )


def _number(v: float, bound: bool = False) -> str:
    """A value in an error as the user typed it (``repr``), a bound as ``%g`` (seeds' in full);
    an integer of thousands of digits by its length (Python will not print it)."""
    if isinstance(v, int) and abs(v).bit_length() > 66:
        return f"an integer of about {int(abs(v).bit_length() * 0.30103)} digits"
    if bound:
        return str(int(v)) if float(v).is_integer() and abs(v) < 1e20 else f"{v:g}"
    return repr(v)
