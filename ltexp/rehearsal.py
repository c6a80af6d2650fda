"""A rehearsal of the protocol where nothing can be downloaded: CIFAR-100 in its real on-disk
format and each backbone's pretrained weights in its library's cache, written with random
(seeded) values and the real names, keys and shapes.

What runs on them is the protocol's own path (torchvision's and timm's loaders, the CIFAR reader,
the 224-px pipeline, registration of 3.5-88 M-parameter models): a user with a GPU and a network
meets nothing there that a rehearsal did not. The numbers mean nothing (the pixels and weights are
noise); ``scripts/rehearse_protocol.py`` and the slow test of MobileNetV2 run it.

- torchvision's weights: ``$TORCH_HOME/hub/checkpoints/<file of the weights' URL>`` (a state
  dict of tensors, what ``torch.hub.load_state_dict_from_url`` finds before it downloads);
- timm's: the Hugging Face hub cache, ``$HF_HOME/hub/models--timm--<repo>/snapshots/<rev>/
  model.safetensors`` with ``refs/main`` naming ``<rev>`` (what ``hf_hub_download`` finds
  offline);
- CIFAR: ``cifar-100-python/`` with its pickled ``train``, ``test`` and ``meta`` dicts
  (``fine_labels``, ``coarse_labels``, ``data`` as uint8 rows of 3,072), and optionally the
  ``.tar.gz`` the download would extract it from.
"""

from __future__ import annotations

import os
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torchvision.models as tvm
from huggingface_hub import constants
from safetensors.torch import save_file

from ltexp.data.cifar import CIFAR10, CIFAR100
from ltexp.data.splits import Protocol, build_splits
from ltexp.errors import ConfigError
from ltexp.models import model_spec

_REVISION = "0" * 40  # the snapshot a rehearsal writes (any 40-hex commit id)


def weights_cache_path(model: str) -> Path:
    """Where ``model``'s library looks for its pretrained weights before it downloads them."""
    spec = model_spec(model)
    if spec.source == "torchvision":
        url = tvm.get_weight(spec.weights).url
        return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name
    if spec.source == "timm":
        hub_id = timm.models.get_pretrained_cfg(spec.weights).hf_hub_id
        folder = Path(constants.HF_HUB_CACHE) / ("models--" + hub_id.replace("/", "--"))
        return folder / "snapshots" / _REVISION / "model.safetensors"
    raise ConfigError(f"{model} has no pretrained weights to rehearse (source {spec.source})")


def write_weights_cache(model: str, seed: int = 0) -> Path:
    """Write random (seeded) weights of ``model``'s own architecture where its library looks;
    return the file. The values are noise: a rehearsal proves the path, not the weights."""
    spec = model_spec(model)
    torch.manual_seed(seed)
    network = spec.create(False)  # the architecture with its original classifier
    state = {k: v.detach().clone().contiguous() for k, v in network.state_dict().items()}
    path = weights_cache_path(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    if spec.source == "timm":
        save_file(state, str(path))
        refs = path.parents[2] / "refs"
        refs.mkdir(parents=True, exist_ok=True)
        (refs / "main").write_text(_REVISION)
    else:
        torch.save(state, path)
    return path


def write_cifar(
    root: Path,
    dataset: str = "cifar100",
    train_per_class: int = 500,
    test_per_class: int = 100,
    seed: int = 0,
    tarball: bool = False,
) -> Path:
    """Write a CIFAR release's on-disk format (its batch files with their keys, the names in
    ``meta``) with random pixels under ``root``, as the download leaves it; return the folder.
    ``tarball`` also writes the ``.tar.gz`` the download would extract it from."""
    release = {"cifar100": CIFAR100, "cifar10": CIFAR10}[dataset]
    rng = np.random.default_rng(seed)
    folder = Path(root) / release.folder
    folder.mkdir(parents=True, exist_ok=True)
    k = 100 if release.name == "cifar100" else 10
    for files, per_class in (
        (release.train_files, train_per_class),
        (release.test_files, test_per_class),
    ):
        labels = np.repeat(np.arange(k), per_class)
        rng.shuffle(labels)
        data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
        for name, part in zip(
            files, np.array_split(np.arange(len(labels)), len(files)), strict=True
        ):
            batch: dict[bytes, Any] = {
                b"filenames": [f"{i}.png".encode() for i in part],
                b"batch_label": name.encode(),
                release.label_key.encode(): labels[part].tolist(),
                b"data": data[part],
            }
            if release.name == "cifar100":
                batch[b"coarse_labels"] = (labels[part] // 5).tolist()
            with open(folder / name, "wb") as f:
                pickle.dump(batch, f, protocol=2)
    meta = {release.names_key.encode(): [f"class{i}".encode() for i in range(k)]}
    with open(folder / release.meta_file[0], "wb") as f:
        pickle.dump(meta, f, protocol=2)
    if tarball:
        with tarfile.open(Path(root) / Path(release.url).name, "w:gz") as tar:
            tar.add(folder, arcname=release.folder)
    return folder


def protocol_manifest(dataset: str = "cifar100") -> dict:
    """The prepare_data manifest of CIFAR's protocol splits (the split protocol run on CIFAR's
    labels; no images): what a report of a protocol study reads."""
    k = 100 if dataset == "cifar100" else 10
    train = np.repeat(np.arange(k), 50_000 // k)
    test = np.repeat(np.arange(k), 10_000 // k)
    plan = build_splits(train, test, Protocol())
    splits = {
        s: {"n": len(i), "per_class": plan.per_class(s, test if s == "val" else train)}
        for s, i in plan.indices.items()
    }
    return {
        "dataset": dataset,
        "num_classes": k,
        "class_rank": [int(c) for c in plan.class_rank],
        "groups": plan.groups,
        "splits": splits,
    }


def offline_environment(home: Path) -> dict[str, str]:
    """The environment a rehearsal's commands run in: the libraries' caches under ``home``,
    the Hugging Face hub offline (its cache answers, nothing is asked of the network)."""
    return {
        **os.environ,
        "TORCH_HOME": str(Path(home) / "torch"),
        "HF_HOME": str(Path(home) / "hf"),
        "HF_HUB_OFFLINE": "1",
    }
