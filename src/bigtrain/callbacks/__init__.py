"""Callbacks shipped with bigtrain: logging, progress, checkpoints, early stopping, health,
dynamic batch size."""

from bigtrain.callbacks.checkpointing import Checkpointer, EarlyStopping
from bigtrain.callbacks.health import HealthCheck
from bigtrain.callbacks.logging import MetricsLogger
from bigtrain.callbacks.noise_scale import DynamicBatch, DynamicBatchConfig
from bigtrain.callbacks.progress import ProgressBar

__all__ = [
    "Checkpointer",
    "DynamicBatch",
    "DynamicBatchConfig",
    "EarlyStopping",
    "HealthCheck",
    "MetricsLogger",
    "ProgressBar",
]
