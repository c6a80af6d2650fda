"""Data: source datasets (registry), the split protocol, prepared datasets, the tensor pipeline."""

from ltexp.data.prepared import PreparedData, Split, prepare, rebuild
from ltexp.data.sources import DATASETS, SourceData, list_datasets, load_source, register_dataset
from ltexp.data.splits import PROFILES, SPLITS, Protocol, build_splits, profile_counts

# Registration happens on import.
from ltexp.data import cifar as _cifar  # noqa: F401  isort: skip
from ltexp.data import digits as _digits  # noqa: F401  isort: skip
from ltexp.data import synthetic as _synthetic  # noqa: F401  isort: skip

__all__ = [
    "DATASETS",
    "PROFILES",
    "SPLITS",
    "PreparedData",
    "Protocol",
    "SourceData",
    "Split",
    "build_splits",
    "list_datasets",
    "load_source",
    "prepare",
    "profile_counts",
    "rebuild",
    "register_dataset",
]
