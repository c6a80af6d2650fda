"""How much of a backbone a run trains: the ``finetune`` option, layer-wise learning-rate decay,
and LoRA.

A backbone is cut into *stages*, bottom to top (the stem, then its blocks or resolution stages;
:attr:`ModelSpec.stages <ltexp.models.registry.ModelSpec>` for the registered backbones, a
generic rule for ``timm:<name>``). Every parameter gets a *depth*: its stage's index, ``n`` (the
number of stages) for what lies between the last stage and the classifier (a final norm), and
``n + 1`` for the classifier. The modes decide from that depth which parameters train:

- ``full``: everything (the protocol).
- ``linear``: the classifier only (a linear probe of the frozen backbone).
- ``freeze:<k>``: the first ``k`` stages stay frozen, the rest trains.
- ``gradual``: the classifier first, then one more level from the top every
  ``gradual_epochs`` epochs (ULMFiT's gradual unfreezing, Howard and Ruder 2018).
- ``bitfit``: biases and normalisation layers only, and the classifier (Ben Zaken et al. 2022).
- ``lora``: low-rank updates ``W + (α/r)·B·A`` of the stages' weights through ``peft`` (Hu et al.
  2022), and the classifier; merged into the weights at export, so a registered model is the
  plain architecture.

Frozen parameters are never handed a gradient (``requires_grad`` off), so the optimiser skips
them and they stay bit-identical; a batch norm whose parameters are all frozen keeps its running
statistics (it runs in eval mode), as a frozen layer should.

``llrd`` (layer-wise learning-rate decay, Clark et al. 2020; BEiT, Bao et al. 2022) is separate
and combines with any mode: stage ``i`` trains at ``lr · llrd^(n − i)``; the top (final norm and
classifier) at ``lr``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from ltexp.errors import ConfigError

FINETUNE_MODES = ("full", "linear", "freeze:<k>", "gradual", "bitfit", "lora")
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_EXPANDED = ("blocks", "stages", "layers", "features")  # containers the generic rule opens
LORA_ADAPTER = "default"  # peft's name of the one adapter ltexp adds


@dataclass(frozen=True)
class Finetune:
    """A parsed ``finetune`` value: its mode and, for ``freeze``, how many stages."""

    mode: str
    frozen_stages: int = 0

    @property
    def name(self) -> str:
        """The option's value (``freeze:2``)."""
        return f"freeze:{self.frozen_stages}" if self.mode == "freeze" else self.mode


def parse_finetune(value: str) -> Finetune:
    """``full``, ``linear``, ``freeze:<k>``, ``gradual``, ``bitfit`` or ``lora``.

    Raises:
        ConfigError: any other value, or ``freeze:`` without a whole number ≥ 1.
    """
    text = value.strip().lower()
    if text.startswith("freeze:"):
        k = text.removeprefix("freeze:")
        # ASCII digits only ('²' is a digit to str.isdigit), and few of them: no backbone has
        # 1,000 stages, and Python will not read 4,300 digits
        if not re.fullmatch(r"[0-9]{1,3}", k) or int(k) < 1:
            raise ConfigError(
                f"finetune={value[:40]!r}: freeze:<k> needs k, the number of stages frozen from "
                f"the bottom, as a whole number from 1 to 999 (e.g. freeze:2)"
            )
        return Finetune("freeze", int(k))
    if text in FINETUNE_MODES:
        return Finetune(text)
    raise ConfigError(f"unknown finetune {value!r}; valid: {', '.join(FINETUNE_MODES)}")


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _has_parameters(module: nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def generic_stages(model: nn.Module, classifier: str) -> tuple[tuple[str, ...], ...]:
    """Stages of a model no registry entry describes: its top-level children in order, the
    containers named blocks, stages, layers or features opened into their items; parameters
    held directly by the model (a ViT's class token and position embedding) join the first
    stage; children without parameters and the classifier are left out."""
    stages: list[list[str]] = []
    for name, child in model.named_children():
        if _under(classifier, name) or not _has_parameters(child):
            continue
        if name in _EXPANDED and isinstance(child, nn.Sequential | nn.ModuleList):
            stages += [[f"{name}.{i}"] for i, c in enumerate(child) if _has_parameters(c)]
        else:
            stages.append([name])
    own = [n for n, _ in model.named_parameters(recurse=False)]
    if stages:
        stages[0] = own + stages[0]
    return tuple(tuple(s) for s in stages)


def parameter_depths(
    model: nn.Module, stages: tuple[tuple[str, ...], ...], classifier: str
) -> dict[str, int]:
    """Each parameter's depth: its stage's index, ``len(stages)`` outside every stage (a final
    norm), ``len(stages) + 1`` in the classifier."""
    n = len(stages)
    out = {}
    for name, _ in model.named_parameters():
        if _under(name, classifier):
            out[name] = n + 1
            continue
        out[name] = next(
            (i for i, prefixes in enumerate(stages) if any(_under(name, p) for p in prefixes)), n
        )
    return out


def lora_targets(
    model: nn.Module, stages: tuple[tuple[str, ...], ...], pattern: str = ""
) -> list[str]:
    """The modules LoRA adapts: those whose full name matches ``pattern`` (a backbone's
    documented default, e.g. a ViT's attention ``qkv``), else every ``Linear`` and ungrouped
    ``Conv2d`` inside the stages (peft cannot adapt a grouped or depthwise convolution)."""
    names = []
    for name, module in model.named_modules():
        if pattern:
            if re.fullmatch(pattern, name) and isinstance(module, nn.Linear | nn.Conv2d):
                names.append(name)
            continue
        inside = any(_under(name, p) for prefixes in stages for p in prefixes)
        adaptable = isinstance(module, nn.Linear) or (
            isinstance(module, nn.Conv2d) and module.groups == 1
        )
        if inside and adaptable:
            names.append(name)
    return names


def add_lora(model: nn.Module, targets: list[str], rank: int, alpha: float) -> nn.Module:
    """Inject LoRA adapters into ``targets`` of ``model``, in place (no wrapper: the module's
    own forward, its classifier and its other parameters' names stay as they were)."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError:
        raise ConfigError(
            "finetune=lora needs the peft library: pip install 'ltexp[lora]' (or pip install "
            "peft), or choose another finetune mode"
        ) from None
    if not targets:
        raise ConfigError("finetune=lora: this model has no layer LoRA can adapt")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets)
    return inject_adapter_in_model(config, model, adapter_name=LORA_ADAPTER)


def lora_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The peft LoRA layers of ``model`` (none when peft was never imported: importing it
    costs seconds, and a model without LoRA is every model but a ``finetune=lora`` one)."""
    lora = sys.modules.get("peft.tuners.lora")
    if lora is None:
        return []
    return [(n, m) for n, m in model.named_modules() if isinstance(m, lora.LoraLayer)]


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s weights with every LoRA update merged in, under the plain architecture's
    names (``qkv.weight`` for ``qkv.base_layer.weight + ΔW``): what a checkpoint registers and
    :func:`~ltexp.models.build_model` loads. Without LoRA, the state dict itself."""
    state = model.state_dict()
    layers = lora_layers(model)
    if not layers:
        return state
    for name, layer in layers:
        prefix = f"{name}." if name else ""
        own = [
            k
            for k in state
            if k.startswith(prefix + "base_layer.") or k.startswith(prefix + "lora_")
        ]
        with torch.no_grad():
            delta = layer.get_delta_weight(LORA_ADAPTER)
        merged = state[f"{prefix}base_layer.weight"] + delta.to(
            state[f"{prefix}base_layer.weight"].dtype
        )
        for key in own:
            value = state.pop(key)
            if key.startswith(prefix + "base_layer."):
                state[prefix + key.removeprefix(prefix + "base_layer.")] = value
        state[f"{prefix}weight"] = merged.detach()
    return state


@dataclass
class FinetunePlan:
    """What trains when, for one model: built once, applied at the start of every epoch."""

    finetune: Finetune
    depths: dict[str, int]
    params: dict[str, nn.Parameter]
    norm_params: frozenset[str]  # parameters of normalisation layers (bitfit trains them)
    batch_norms: list[nn.Module]
    gradual_epochs: int = 1

    def trainable(self, name: str, epoch: int = 1) -> bool:
        """Whether parameter ``name`` trains in (1-based) ``epoch``."""
        f, depth = self.finetune, self.depths[name]
        top = max(self.depths.values())
        if f.mode == "full":
            return True
        if f.mode == "linear":
            return depth == top
        if f.mode == "freeze":
            return depth >= f.frozen_stages
        if f.mode == "gradual":
            levels = sorted(set(self.depths.values()), reverse=True)
            unfrozen = 1 + (epoch - 1) // self.gradual_epochs
            return depth in levels[:unfrozen]
        if f.mode == "bitfit":
            return depth == top or name.endswith(".bias") or name in self.norm_params
        if f.mode == "lora":
            return depth == top or ".lora_" in name
        raise AssertionError(f.mode)  # pragma: no cover - parse_finetune admits no other

    def start_epoch(self, epoch: int) -> None:
        """Switch each parameter's gradient on or off for ``epoch``; a batch norm whose
        parameters are all frozen keeps its statistics (call after ``model.train()``)."""
        for name, p in self.params.items():
            p.requires_grad_(self.trainable(name, epoch))
        for bn in self.batch_norms:
            if not any(p.requires_grad for p in bn.parameters()):
                bn.eval()

    def decay_exempt(self, model: nn.Module) -> frozenset[str]:
        """Parameters BEiT and timm keep out of weight decay: biases, normalisation layers'
        weights, and what the model's own ``no_weight_decay()`` names (a ViT's ``cls_token``
        and ``pos_embed``; timm)."""
        own = {
            f"{mname}.{pname}" if mname else pname
            for mname, module in model.named_modules()
            if callable(getattr(module, "no_weight_decay", None))
            for pname in module.no_weight_decay()
        }
        return frozenset(
            name
            for name in self.params
            if name.endswith(".bias") or name in self.norm_params or name in own
        )

    def trainable_count(self, epoch: int = 1) -> int:
        """Parameters that train in ``epoch`` (the most, for ``gradual``, at its last level)."""
        return sum(p.numel() for n, p in self.params.items() if self.trainable(n, epoch))


def plan_finetune(
    model: nn.Module,
    finetune: Finetune,
    stages: tuple[tuple[str, ...], ...],
    classifier: str,
    gradual_epochs: int = 1,
) -> FinetunePlan:
    """The :class:`FinetunePlan` of ``model`` (LoRA already injected for ``lora``).

    Raises:
        ConfigError: ``freeze:<k>`` with more stages than the model has.
    """
    if finetune.mode == "freeze" and finetune.frozen_stages > len(stages):
        raise ConfigError(
            f"finetune={finetune.name}: this model has {len(stages)} stages; freeze:<k> takes "
            f"k from 1 to {len(stages)} (finetune=linear freezes everything but the classifier)"
        )
    norm_params = {
        f"{mname}.{pname}" if mname else pname
        for mname, module in model.named_modules()
        if isinstance(module, _NORMS)
        for pname, _ in module.named_parameters(recurse=False)
    }
    batch_norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    return FinetunePlan(
        finetune,
        parameter_depths(model, stages, classifier),
        dict(model.named_parameters()),
        frozenset(norm_params),
        batch_norms,
        gradual_epochs,
    )


def layer_decay_groups(
    params: Iterable[tuple[str, nn.Parameter]],
    depths: dict[str, int],
    lr: float,
    llrd: float,
    no_decay: frozenset[str] = frozenset(),
) -> list[dict]:
    """Optimizer parameter groups of layer-wise learning-rate decay, the top group first (its
    lr is the one a run logs): stage ``i`` at ``lr · llrd^(n − i)``, the final norm and the
    classifier at ``lr`` (BEiT's assignment); ``llrd = 1`` puts every parameter at ``lr``. The
    parameters named in ``no_decay`` go to groups of their own with ``weight_decay = 0``
    (:meth:`FinetunePlan.decay_exempt`)."""
    n = max(depths.values()) - 1 if llrd != 1.0 else 0  # the number of stages
    groups: dict[tuple[int, bool], list[nn.Parameter]] = {}
    for name, p in params:
        level = min(depths[name], n) if n else 0
        groups.setdefault((level, name in no_decay), []).append(p)
    return [
        {"params": groups[key], "lr": lr * llrd ** (n - key[0])}
        | ({"weight_decay": 0.0} if key[1] else {})
        for key in sorted(groups, key=lambda k: (-k[0], k[1]))
    ]
