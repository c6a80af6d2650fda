"""Configuration: presets, overrides, types, ranges, unknown keys, YAML safety, fuzzing."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from ltexp.config import all_fields, build_config, convert
from ltexp.errors import ConfigError


def test_defaults_are_the_spec_protocol() -> None:
    cfg = build_config("thesis")
    t = cfg.train
    assert (t.optimizer, t.lr, t.betas, t.eps, t.weight_decay) == (
        "adam",
        1e-3,
        (0.9, 0.999),
        1e-8,
        0.0,
    )
    assert (t.batch_size, t.epochs, t.scheduler, t.step_size, t.lr_gamma, t.seed) == (
        128,
        90,
        "step",
        30,
        0.1,
        42,
    )
    assert cfg.data.dataset == "cifar100" and cfg.data.imbalance_ratio == 100.0
    assert cfg.grid_values("model") == ["resnet50", "mobilenet_v2", "vit_b16", "convnext_base"]
    assert cfg.grid_values("loss") == ["ce", "focal", "wce", "cb", "bs", "seql", "ldam"]
    assert cfg.losses["ldam"] == {"max_margin": 0.5, "scale": 30.0}


def test_demo_preset_holds_only_what_differs() -> None:
    cfg = build_config("demo")
    assert cfg.data.dataset == "digits" and cfg.train.model == "tiny_cnn"
    assert cfg.train.lr == 1e-3  # not in demo.yaml: the protocol default


def test_overrides_from_strings() -> None:
    cfg = build_config(
        "demo",
        {
            "lr": "0.01",
            "betas": "0.8,0.99",
            "seeds": "1,2,3",
            "deterministic": "true",
            "focal_gamma": "1.5",
            "n_max_train": "none",
        },
    )
    assert cfg.train.lr == 0.01 and cfg.train.betas == (0.8, 0.99)
    assert cfg.grid_values("seed") == [1, 2, 3] and cfg.train.deterministic is True
    assert cfg.losses["focal"]["gamma"] == 1.5 and cfg.data.n_max_train is None


@pytest.mark.parametrize(
    "key,value,message",
    [
        ("lr", "0", "lr must be > 0"),
        ("lr", "-1", "lr must be > 0"),
        ("epochs", "0", "epochs must be >= 1"),
        ("batch_size", "0", "batch_size must be >= 1"),
        ("epochs", "1.5", "expected an integer"),
        ("lr", "fast", "expected a number"),
        ("lr", "nan", "finite"),
        ("deterministic", "maybe", "expected true or false"),
        ("train_split", "long", "unknown train_split value 'long'"),
        ("imbalance_ratio", "0.5", "imbalance_ratio must be >= 1"),
        ("betas", "0.9", "expected 2 comma-separated values"),
        ("lerning_rate", "1", "unknown option 'lerning_rate'"),
    ],
)
def test_bad_values_are_refused_with_the_reason(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_config("demo", {key: value})


def test_unknown_yaml_key_names_it_and_the_valid_ones(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError) as err:
        build_config(str(path))
    msg = str(err.value)
    assert "train.learning_rate" in msg and "valid:" in msg and "lr" in msg
    path.write_text("trian:\n  lr: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown section 'trian'.*did you mean 'train'"):
        build_config(str(path))
    path.write_text("losses:\n  focal:\n    gama: 1\n")
    with pytest.raises(ConfigError, match=r"losses.focal.gama.*did you mean 'gamma'"):
        build_config(str(path))


def test_yaml_tags_that_build_objects_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "evil.yaml"
    marker = tmp_path / "pwned"
    path.write_text(f"train: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        build_config(str(path))
    assert not marker.exists()


def test_wrong_types_in_yaml(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  epochs: [1, 2]\n")
    with pytest.raises(ConfigError, match="epochs: expected an integer"):
        build_config(str(path))
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        build_config(str(path))


def test_unknown_preset_lists_presets() -> None:
    with pytest.raises(ConfigError, match=r"unknown preset 'demoo'.*demo, thesis"):
        build_config("demoo")


def test_resolved_config_round_trips_through_yaml(tmp_path: Path) -> None:
    cfg = build_config("demo", {"lr": "0.02", "seeds": "4,5"})
    path = tmp_path / "resolved.yaml"
    data = cfg.to_dict()
    data.pop("preset")
    path.write_text(yaml.safe_dump(data))
    again = build_config(str(path))
    assert again.flat() | {"preset": "x"} == cfg.flat() | {"preset": "x"}


_FIELDS = all_fields()


@settings(max_examples=300, deadline=None)
@given(
    key=st.sampled_from(sorted(_FIELDS)),
    value=st.one_of(
        st.text(max_size=20),
        st.integers(),
        st.floats(allow_nan=True),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=3),
    ),
)
def test_fuzz_converter_only_raises_config_errors(key: str, value: object) -> None:
    with contextlib.suppress(ConfigError):
        convert(_FIELDS[key], value)


@settings(max_examples=150, deadline=None)
@given(
    st.recursive(
        st.one_of(st.text(max_size=8), st.integers(), st.floats(), st.booleans(), st.none()),
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(st.text(max_size=8), children, max_size=3),
        ),
        max_leaves=8,
    )
)
def test_fuzz_yaml_loader_only_raises_config_errors(tmp_path_factory, data: object) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with contextlib.suppress(ConfigError):
        build_config(str(path))


# --- fields describe themselves ---------------------------------------------------------------


def test_runtime_fields_are_declared_once_and_left_out_of_identities() -> None:
    from ltexp.cells import identity, identity_hash, study_hash
    from ltexp.config import runtime_keys

    def train_hash(cfg, digest):
        return identity_hash(identity(cfg, digest))

    keys = runtime_keys()
    for key in ("device", "checkpoint_dir", "num_threads", "data_root", "workers", "resume"):
        assert key in keys
    for key in ("lr", "precision", "model", "dataset", "seeds", "synthetic_classes"):
        assert key not in keys
    base = build_config("demo")
    runtime_only = base.replace(
        device="cpu", checkpoint_dir="/elsewhere", num_threads=3, eval_batch_size=7, workers=4
    )
    assert train_hash(runtime_only, "d") == train_hash(base, "d")
    assert study_hash(runtime_only) == study_hash(base)
    assert train_hash(base.replace(lr=0.5), "d") != train_hash(base, "d")
    assert train_hash(base, "other data") != train_hash(base, "d")
    assert study_hash(base.replace(seeds="1,2")) != study_hash(base)


def test_commands_take_the_fields_they_use_and_help_lists_the_registries() -> None:
    from ltexp.config import command_fields

    evaluate = {f.key for f in command_fields("evaluate")}
    assert {"device", "precision", "eval_batch_size", "num_threads", "model_uri", "tau"} <= evaluate
    assert not evaluate & {"lr", "checkpoint_dir", "compile", "models"}
    assert {f.key for f in command_fields("aggregate")} == {
        "output_dir",
        "report_dataset",
        "percent",
        "intervals",
        "references",
        "claims",
        "variant",
    }
    model = next(f for f in command_fields("train") if f.key == "model")
    assert "resnet50" in model.help_text() and "timm:<name>" in model.help_text()
    loss = next(f for f in command_fields("main") if f.key == "losses")
    assert "ldam" in loss.help_text()


def test_config_is_immutable_and_replace_checks_values() -> None:
    import dataclasses

    cfg = build_config("demo")
    other = cfg.replace(lr="0.5", focal_gamma=1)
    assert (cfg.train.lr, other.train.lr) == (1e-3, 0.5)
    assert cfg.losses["focal"]["gamma"] == 2.0 and other.losses["focal"]["gamma"] == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.lr = 2.0  # type: ignore[misc]
    with pytest.raises(ConfigError, match="lr must be > 0"):
        cfg.replace(lr=0)


def test_presets_written_before_the_runtime_section_still_load(tmp_path: Path) -> None:
    path = tmp_path / "old.yaml"
    path.write_text("train:\n  device: cpu\n  num_threads: 2\n  lr: 0.01\n")
    cfg = build_config(str(path))
    assert (cfg.runtime.device, cfg.runtime.num_threads, cfg.train.lr) == ("cpu", 2, 0.01)
    path.write_text("data:\n  dataset: synthetic\n  synthetic_classes: 4\n")
    assert build_config(str(path)).dataset_options() == {
        "num_classes": 4,
        "train_per_class": 200,
        "test_per_class": 40,
        "image_size": 32,
        "seed": 0,
    }
