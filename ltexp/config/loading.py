"""Resolving a configuration: dataclass defaults, then a preset (YAML), then overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from ltexp.config.fields import loss_key
from ltexp.config.grid import axes
from ltexp.config.sections import DEFAULT_PRESET, SECTIONS, Config, all_fields, apply_overrides
from ltexp.errors import ConfigError, did_you_mean, unknown_name_error

PRESET_DIR = Path(__file__).resolve().parent.parent.parent / "configs"


def preset_path(preset: str) -> Path:
    """Path of a preset: a YAML file path, or a name in ``configs/``."""
    candidate = Path(preset).expanduser()
    if candidate.suffix in (".yaml", ".yml"):
        if not candidate.is_file():
            raise ConfigError(f"config file {preset!r} does not exist")
        return candidate
    valid = list_presets()
    for folder in (Path.cwd() / "configs", PRESET_DIR):
        path = folder / f"{preset}.yaml"
        if path.is_file():
            return path
    raise unknown_name_error("preset", preset, valid)


def list_presets() -> list[str]:
    """Names of the presets shipped in ``configs/``."""
    names = {
        p.stem
        for folder in (Path.cwd() / "configs", PRESET_DIR)
        if folder.is_dir()
        for p in folder.glob("*.yaml")
    }
    return sorted(names)


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.safe_load``, but a key given twice in one mapping is an error, not "last wins"."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key {key!r} is given twice", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with ``yaml.safe_load`` (tags that build objects are refused)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read config {str(path)!r}: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config {str(path)!r} is not UTF-8 text (byte {e.start}); save it as UTF-8"
        ) from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"config {str(path)!r} is not valid YAML: {first}") from None
    except RecursionError:
        raise ConfigError(
            f"config {str(path)!r} is nested too deeply to be a config (sections hold keys)"
        ) from None
    except ValueError as e:  # an integer of thousands of digits, which Python will not read
        raise ConfigError(
            f"config {str(path)!r} holds a value no option can take ({str(e)[:80]})"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config {str(path)!r} must be a mapping of sections, got {type(data).__name__}"
        )
    return data


def yaml_to_overrides(data: dict[str, Any], source: str) -> dict[str, Any]:
    """Flatten a nested YAML mapping to ``{flat_key: value}``, rejecting unknown keys."""
    out: dict[str, Any] = {}
    valid_top = ["experiment", *SECTIONS, "losses"]
    fields = all_fields()
    for top, body in data.items():
        if not isinstance(top, str):
            raise ConfigError(f"{source}: section names must be strings, got {top!r}")
        if top == "experiment":
            out["experiment"] = body
            continue
        if top not in valid_top:
            raise ConfigError(
                f"{source}: unknown section {top!r}{did_you_mean(top, valid_top)}; "
                f"valid: {', '.join(valid_top)}"
            )
        if body is None:
            continue
        if not isinstance(body, dict):
            raise ConfigError(
                f"{source}: section {top!r} must be a mapping, got {type(body).__name__}"
            )
        if top == "losses":
            out.update(_loss_overrides(body, source))
            continue
        # a section's own fields by their name there, fields that moved and dataset options by
        # their flat key
        valid = {f.name: k for k, f in fields.items() if f.section == top}
        valid.update(
            {
                k: k
                for k, f in fields.items()
                if f.also_under == top or (top == "data" and f.section == "datasets")
            }
        )
        for key, value in body.items():
            if key not in valid:
                raise ConfigError(
                    f"{source}: unknown key {top}.{key}"
                    f"{did_you_mean(str(key), list(valid))}; valid: {', '.join(valid)}"
                )
            out[valid[key]] = value
    return out


def _loss_overrides(body: dict[str, Any], source: str) -> dict[str, Any]:
    from ltexp.losses import LOSSES  # torch (1.4 s): see sections.py

    out = {}
    for loss, hps in body.items():
        if loss not in LOSSES:
            raise ConfigError(
                f"{source}: unknown loss {loss!r} under losses"
                f"{did_you_mean(str(loss), list(LOSSES))}; "
                f"valid: {', '.join(LOSSES)}"
            )
        if not isinstance(hps, dict):
            raise ConfigError(f"{source}: losses.{loss} must be a mapping of hyper-parameters")
        valid = [hp.name for hp in LOSSES[loss].hparams]
        for name, value in hps.items():
            if name not in valid:
                raise ConfigError(
                    f"{source}: unknown key losses.{loss}.{name}"
                    f"{did_you_mean(str(name), valid)}; "
                    f"valid: {', '.join(valid) or '(none)'}"
                )
            out[loss_key(loss, name)] = value
    return out


def default_config(preset: str = DEFAULT_PRESET) -> Config:
    """The dataclass defaults, with every registered loss's and dataset's own defaults."""
    from ltexp.data import DATASETS
    from ltexp.losses import LOSSES

    return Config(
        preset=preset,
        losses={name: {hp.name: hp.default for hp in s.hparams} for name, s in LOSSES.items()},
        datasets={name: {o.name: o.default for o in s.options} for name, s in DATASETS.items()},
        grid={a.key: list(a.default) for a in axes()},
    )


def build_config(preset: str | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Resolve a configuration: dataclass defaults, then the preset, then ``overrides``.

    Args:
        preset: preset name in ``configs/`` or a YAML path (default ``demo``).
        overrides: flat ``{key: value}`` pairs (CLI options); values may be strings.

    Raises:
        ConfigError: an unknown key (with the valid ones and a did-you-mean), a wrong type, an
            out-of-range value.
    """
    preset = preset or DEFAULT_PRESET
    path = preset_path(preset)
    values = yaml_to_overrides(read_yaml(path), f"config {str(path)!r}")
    values.update(overrides or {})
    return apply_overrides(default_config(preset), values)
