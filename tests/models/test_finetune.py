"""What each finetune mode trains: which parameters receive gradients and change, which stay
bit-identical; LoRA's export; layer-wise learning-rate decay; warmup."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ltexp.errors import ConfigError
from ltexp.models import build_model, model_spec
from ltexp.models.finetune import (
    FinetunePlan,
    add_lora,
    generic_stages,
    layer_decay_groups,
    lora_targets,
    parse_finetune,
    plain_state_dict,
    plan_finetune,
)
from ltexp.training.setup import make_scheduler

SMALL = ("tiny_cnn", "cifar_resnet8")


def _model_and_plan(name: str, mode: str, gradual_epochs: int = 1) -> tuple:
    torch.manual_seed(0)
    model = build_model(name, 5, pretrained=False)
    spec = model_spec(name)
    finetune = parse_finetune(mode)
    if finetune.mode == "lora":
        add_lora(model, lora_targets(model, spec.stages, spec.lora_targets), 4, 8.0)
    return model, plan_finetune(model, finetune, spec.stages, spec.classifier, gradual_epochs)


def _train_steps(model: torch.nn.Module, plan: FinetunePlan, epoch: int, steps: int = 2) -> dict:
    """Train a few steps of ``epoch``; return the state before and the names of the parameters
    that received a gradient."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    model.train()
    plan.start_epoch(epoch)
    graded = set()
    for _ in range(steps):
        x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 5, (8,))
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        graded |= {n for n, p in model.named_parameters() if p.grad is not None}
        optimizer.step()
    return before, graded


def _changed(model: torch.nn.Module, before: dict) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


def _params(model: torch.nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters()}


@pytest.mark.parametrize("name", SMALL)
def test_full_trains_every_parameter(name: str) -> None:
    model, plan = _model_and_plan(name, "full")
    before, graded = _train_steps(model, plan, 1)
    assert graded == _params(model)
    assert _params(model) <= _changed(model, before)


@pytest.mark.parametrize("name", SMALL)
def test_linear_trains_the_classifier_and_nothing_else(name: str) -> None:
    model, plan = _model_and_plan(name, "linear")
    before, graded = _train_steps(model, plan, 1)
    assert graded == {"fc.weight", "fc.bias"}
    # the frozen backbone is bit-identical, batch-norm statistics included
    assert _changed(model, before) == {"fc.weight", "fc.bias"}
    assert plan.trainable_count() == sum(p.numel() for p in model.fc.parameters())


def test_freeze_k_freezes_the_first_k_stages() -> None:
    model, plan = _model_and_plan("cifar_resnet8", "freeze:2")  # the stem and stage 1
    before, graded = _train_steps(model, plan, 1)
    frozen = {n for n in _params(model) if n.startswith(("conv1", "bn1", "layers.0."))}
    assert frozen and not graded & frozen
    assert graded == _params(model) - frozen
    changed = _changed(model, before)
    assert not changed & {k for k in before if k.startswith(("conv1", "bn1", "layers.0."))}
    assert {"layers.1.conv1.weight", "layers.2.bn2.running_mean", "fc.weight"} <= changed


def test_freeze_k_beyond_the_stages_is_refused() -> None:
    with pytest.raises(ConfigError, match="has 4 stages; freeze:<k> takes k from 1 to 4"):
        _model_and_plan("cifar_resnet8", "freeze:5")


@pytest.mark.parametrize("bad", ["freeze:0", "freeze:", "freeze:two", "partial", ""])
def test_unknown_finetune_values_are_refused_with_the_valid_ones(bad: str) -> None:
    with pytest.raises(ConfigError, match="freeze:<k>"):
        parse_finetune(bad)


def test_gradual_unfreezes_one_level_from_the_top_every_n_epochs() -> None:
    model, plan = _model_and_plan("cifar_resnet8", "gradual", gradual_epochs=2)
    stem, stage = "conv1.weight", "layers.{}.conv1.weight"
    trains = {e: {n for n in _params(model) if plan.trainable(n, e)} for e in range(1, 12)}
    assert trains[1] == trains[2] == {"fc.weight", "fc.bias"}
    assert stage.format(2) in trains[3] and stage.format(1) not in trains[3]
    assert stage.format(1) in trains[5] and stem not in trains[7]
    assert trains[9] == trains[11] == _params(model)  # 5 levels: all trainable from epoch 9
    # and what trains in an epoch is exactly what changes in it
    before, graded = _train_steps(model, plan, 3)
    assert graded == trains[3]
    assert _changed(model, before) & _params(model) == trains[3]


@pytest.mark.parametrize("name", SMALL)
def test_bitfit_trains_biases_norms_and_the_classifier(name: str) -> None:
    model, plan = _model_and_plan(name, "bitfit")
    before, graded = _train_steps(model, plan, 1)
    norms = {n for n in _params(model) if ".bn" in n or n.startswith("bn") or ".1." in n}
    expected = {n for n in _params(model) if n.endswith(".bias") or n.startswith("fc.")}
    expected |= {n for n in norms if n.endswith(".weight") and model.get_parameter(n).dim() == 1}
    assert graded == expected
    convs = {n for n in _params(model) if model.get_parameter(n).dim() == 4}
    assert convs and not convs & _changed(model, before)


@pytest.mark.parametrize("name", SMALL)
def test_lora_trains_the_adapters_and_exports_the_merged_model(name: str) -> None:
    model, plan = _model_and_plan(name, "lora")
    for _ in range(2):  # B starts at zero: the second round moves A too
        before, graded = _train_steps(model, plan, 1)
    assert graded == {n for n in _params(model) if ".lora_" in n or n.startswith("fc.")}
    changed = _changed(model, before)
    assert not {k for k in changed if "base_layer" in k or k.endswith("running_mean")}
    assert any(".lora_A." in k for k in changed) and any(".lora_B." in k for k in changed)
    # export: the plain architecture with the updates merged, the same function
    plain = build_model(name, 5, pretrained=False)
    plain.load_state_dict(plain_state_dict(model))
    model.eval(), plain.eval()
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), plain(x), atol=1e-5)
        assert not torch.allclose(model(x), build_model(name, 5, pretrained=False).eval()(x))


def test_lora_targets_a_vits_attention_and_every_plain_layer_of_a_cnn() -> None:
    vit = build_model("timm:vit_tiny_patch16_224", 5, pretrained=False)
    spec = model_spec("vit_b16")
    targets = lora_targets(vit, generic_stages(vit, "head"), spec.lora_targets)
    assert targets == [f"blocks.{i}.attn.qkv" for i in range(12)]
    cnn = build_model("cifar_resnet8", 5, pretrained=False)
    stages = model_spec("cifar_resnet8").stages
    assert "fc" not in lora_targets(cnn, stages) and "layers.2.conv2" in lora_targets(cnn, stages)


def test_the_protocol_backbones_have_their_documented_stages() -> None:
    counts = {}
    for name in ("resnet50", "mobilenet_v2", "convnext_base", "vit_b16"):
        spec = model_spec(name)
        with torch.device("meta"):
            model = build_model(name, 10, pretrained=False)
        plan = plan_finetune(model, parse_finetune("full"), spec.stages, spec.classifier)
        # every stage holds parameters, and only the classifier is at the top
        assert set(range(len(spec.stages))) <= set(plan.depths.values()), name
        top = max(plan.depths.values())
        assert {n for n, d in plan.depths.items() if d == top} == {
            f"{spec.classifier}.weight",
            f"{spec.classifier}.bias",
        }, name
        counts[name] = len(spec.stages)
    assert counts == {"resnet50": 5, "mobilenet_v2": 9, "convnext_base": 5, "vit_b16": 13}


def test_a_timm_model_gets_stages_from_the_generic_rule() -> None:
    vit = build_model("timm:vit_tiny_patch16_224", 5, pretrained=False)
    stages = generic_stages(vit, "head")
    assert stages[0] == ("cls_token", "pos_embed", "patch_embed")
    assert stages[1:13] == tuple((f"blocks.{i}",) for i in range(12))
    assert stages[13:] == (("norm",),)  # the rule cannot tell a final norm from a stage


def test_layer_decay_scales_each_stage_and_keeps_the_top_at_lr() -> None:
    model, plan = _model_and_plan("cifar_resnet8", "full")
    groups = layer_decay_groups(model.named_parameters(), plan.depths, 1e-3, 0.5)
    # 4 stages: stage i at lr·0.5^(4 − i); the classifier (and a final norm) at lr, first
    assert [g["lr"] for g in groups] == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.25e-4, 6.25e-5])
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters()}
    fc = {id(p) for p in model.fc.parameters()}
    assert {id(p) for p in groups[0]["params"]} == fc
    stem = {id(p) for p in [model.conv1.weight, *model.bn1.parameters()]}
    assert {id(p) for p in groups[-1]["params"]} == stem


def test_warmup_rises_linearly_then_hands_over_to_the_schedule() -> None:
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = make_scheduler(
        "cosine", optimizer, epochs=10, step_size=1, gamma=1, warmup_epochs=3
    )
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        scheduler.step()
    assert lrs[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert lrs[4:] == sorted(lrs[4:], reverse=True) and lrs[-1] < 0.1


def test_decay_exempt_keeps_biases_norms_and_vit_tokens_out_of_weight_decay() -> None:
    """Issue 37: BEiT and timm exempt biases, norms, cls_token and pos_embed from decay."""
    torch.manual_seed(0)
    model = build_model("vit_b16", 10, pretrained=False)
    spec = model_spec("vit_b16")
    plan = plan_finetune(model, parse_finetune("full"), spec.stages, spec.classifier)
    exempt = plan.decay_exempt(model)
    names = dict(model.named_parameters())
    tokens = {n for n in names if n.endswith(("cls_token", "pos_embed"))}
    assert len(tokens) == 2 and tokens <= exempt
    assert {n for n in names if n.endswith(".bias")} <= exempt
    assert any("norm" in n and n.endswith(".weight") for n in exempt)
    decayed = set(names) - exempt
    # what decays is exactly the matrices and convolution kernels, as timm's rule gives
    assert decayed == {n for n, p in names.items() if p.ndim > 1 and n not in tokens}
    groups = layer_decay_groups(model.named_parameters(), plan.depths, 1e-3, 0.65, exempt)
    zero = {id(p) for g in groups if g.get("weight_decay") == 0.0 for p in g["params"]}
    assert zero == {id(names[n]) for n in exempt}
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in model.parameters()}
    assert groups[0]["lr"] == pytest.approx(1e-3) and "weight_decay" not in groups[0]
    flat = layer_decay_groups(model.named_parameters(), plan.depths, 1e-3, 1.0, exempt)
    assert [g.get("weight_decay") for g in flat] == [None, 0.0]
    assert all(g["lr"] == pytest.approx(1e-3) for g in flat)


def test_freezing_a_model_without_pretrained_weights_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Issue 42: finetune=linear or lora on a model without pretrained weights said nothing."""
    import logging

    from ltexp.config import build_config
    from ltexp.training.setup import resolve_train

    with caplog.at_level(logging.WARNING, logger="ltexp.training.setup"):
        resolve_train(build_config("demo", {"finetune": "linear", "device": "cpu"}))
    assert "finetune=linear on tiny_cnn without pretrained weights" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ltexp.training.setup"):
        resolve_train(build_config("demo", {"finetune": "full", "device": "cpu"}))
    assert "without pretrained weights" not in caplog.text
