"""Callbacks shipped with bigtrain: logging, progress, checkpoints, early stopping, health."""

from bigtrain.callbacks.checkpointing import Checkpointer, EarlyStopping
from bigtrain.callbacks.health import HealthCheck
from bigtrain.callbacks.logging import MetricsLogger
from bigtrain.callbacks.progress import ProgressBar

__all__ = ["Checkpointer", "EarlyStopping", "HealthCheck", "MetricsLogger", "ProgressBar"]
