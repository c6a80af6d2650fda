"""Data: source datasets (registry), the split protocol, prepared datasets, the tensor pipeline,
samplers and batch mixing.

The datasets, splits and prepared data are NumPy: ``import ltexp.data`` is 0.2 s, and the config
checks names against this registry without waiting for torch. The modules that decode or resize
images (files, digits, synthetic, the CIFAR download) import torch, torchvision and PIL inside
the function that needs them (torch and torchvision: 2.4 s, measured with python -X importtime).
"""

from ltexp.data.prepared import PreparedData, Split, prepare, rebuild
from ltexp.data.sources import (
    DATASETS,
    DatasetOption,
    SourceData,
    dataset_spec,
    list_datasets,
    load_source,
    register_dataset,
)
from ltexp.data.splits import PROFILES, SPLITS, Protocol, build_splits, profile_counts
from ltexp.discover import import_submodules

# Registration happens on import: every module of this package (a dataset is one module).
import_submodules(
    __name__,
    __path__,
    skip=("files", "mixing", "pipeline", "prepared", "samplers", "sources", "splits"),
)

__all__ = [
    "DATASETS",
    "PROFILES",
    "SPLITS",
    "DatasetOption",
    "PreparedData",
    "Protocol",
    "SourceData",
    "Split",
    "build_splits",
    "dataset_spec",
    "list_datasets",
    "load_source",
    "prepare",
    "profile_counts",
    "rebuild",
    "register_dataset",
]
