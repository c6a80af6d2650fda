"""Typed configuration: dataclass sections, YAML presets, command-line overrides.

Every default lives here, next to the reason for it. Defaults are the protocol of the thesis
(docs/protocol.md); presets in ``configs/`` hold only what differs (``demo.yaml``: the embedded
digits data and small models; ``thesis.yaml``: the full grid).

Keys are unique across sections, so every value has one flat name: ``lr`` in YAML under ``train:``,
``--lr`` on the command line, ``-P lr=...`` in ``mlflow run``. Each field describes itself: its
help, its checks, whether it only changes how a run executes (``runtime``: left out of every
identity hash), and which commands take it. Loss hyper-parameters (``<loss>_<hparam>``, e.g.
``focal_gamma``) and dataset options (e.g. ``synthetic_classes``) are declared by their registry
entries, and the study's grid options by the axes of :mod:`ltexp.config.grid`, so a new loss,
dataset or axis needs no edit of the sections. YAML is read with ``yaml.safe_load`` only; unknown
keys are rejected with the valid ones.

- :mod:`ltexp.config.fields`: what one value is, and the converter of YAML and CLI values;
- :mod:`ltexp.config.grid`: the grid's axes;
- :mod:`ltexp.config.sections`: the sections, :class:`Config`, and the table of flat keys;
- :mod:`ltexp.config.loading`: presets, YAML files and overrides resolved into a config.
"""

from ltexp.config.fields import FieldSpec, convert, loss_key, registry_names
from ltexp.config.grid import Axis, axes, axis, register_axis, unregister_axis, variant_axes
from ltexp.config.loading import (
    PRESET_DIR,
    build_config,
    default_config,
    list_presets,
    preset_path,
    read_yaml,
    yaml_to_overrides,
)
from ltexp.config.sections import (
    DEFAULT_PRESET,
    DEMO_PRESET,
    PROTOCOL_PRESET,
    SECTION_COMMANDS,
    SECTIONS,
    Config,
    DataConfig,
    DecoupleConfig,
    EnsembleConfig,
    EvaluateConfig,
    ReportConfig,
    RuntimeConfig,
    StudyConfig,
    TrainConfig,
    TuneConfig,
    added_keys,
    all_fields,
    apply_overrides,
    check_experiment_name,
    command_fields,
    conditional_keys,
    dataset_fields,
    grid_fields,
    loss_fields,
    runtime_keys,
    section_fields,
)

__all__ = [
    "DEFAULT_PRESET",
    "DEMO_PRESET",
    "PRESET_DIR",
    "PROTOCOL_PRESET",
    "SECTIONS",
    "SECTION_COMMANDS",
    "Axis",
    "Config",
    "DataConfig",
    "DecoupleConfig",
    "EnsembleConfig",
    "EvaluateConfig",
    "FieldSpec",
    "ReportConfig",
    "RuntimeConfig",
    "StudyConfig",
    "TrainConfig",
    "TuneConfig",
    "added_keys",
    "all_fields",
    "apply_overrides",
    "axes",
    "axis",
    "build_config",
    "check_experiment_name",
    "command_fields",
    "conditional_keys",
    "convert",
    "dataset_fields",
    "default_config",
    "grid_fields",
    "list_presets",
    "loss_fields",
    "loss_key",
    "preset_path",
    "read_yaml",
    "register_axis",
    "registry_names",
    "runtime_keys",
    "section_fields",
    "unregister_axis",
    "variant_axes",
    "yaml_to_overrides",
]
