"""Data: built-in data sets, user files (CSV, Parquet, npz, IDX), deterministic splits and
resumable loaders. ``load_data(cfg)`` is the entry point; ``make_loader`` batches a split."""

from bigtrain.data.builtin import DATASETS
from bigtrain.data.config import DataConfig
from bigtrain.data.loader import InMemoryLoader, StreamingLoader, make_loader
from bigtrain.data.split import kfold_indices, load_data, train_val_test_split
from bigtrain.data.tables import DataBundle, Split, apply_normalization

__all__ = [
    "DATASETS",
    "DataBundle",
    "DataConfig",
    "InMemoryLoader",
    "Split",
    "StreamingLoader",
    "apply_normalization",
    "kfold_indices",
    "load_data",
    "make_loader",
    "train_val_test_split",
]
