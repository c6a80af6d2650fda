"""Data: source datasets (registry), the split protocol, prepared datasets, the tensor pipeline,
samplers and batch mixing."""

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
