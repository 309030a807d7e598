"""TrainState: everything the loop and callbacks share, in one plain object."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from bigtrain.core.schedule import Schedule
from bigtrain.core.task import StepOutput, Task


@runtime_checkable
class BatchSource(Protocol):
    """What the loop trains from: an iterable of batches with a resumable position.

    ``iter()`` yields the rest of the current epoch (from the saved position after a resume) and
    then advances to the next epoch. ``batch_size`` may be changed between batches (batch-size
    schedules). ``at_epoch_end()`` is True when the current epoch has no batch left, so the loop
    ends the epoch (evaluation, EPOCH_END, checkpoint) right after its last step.
    ``steps_in_epochs`` counts the steps of whole epochs under a batch-size schedule. ``state_dict``
    returns tensors and JSON-able values only.
    """

    batch_size: int

    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...
    def at_epoch_end(self) -> bool: ...
    def steps_in_epochs(self, epochs: int, batch_size_at: Callable[[int], int]) -> int: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@dataclass
class TrainState:
    """The mutable state of one fit. ``step`` counts optimizer steps; ``epoch`` counts full passes."""

    model: nn.Module
    task: Task
    optimizer: torch.optim.Optimizer
    train_data: BatchSource
    val_data: Any = None
    schedule: Schedule | None = None
    step: int = 0
    epoch: int = 0
    max_steps: int = 0
    batch: Any = None
    output: StepOutput | None = None
    loss: torch.Tensor | None = None  # mean loss of the last optimizer step (a tensor: no sync)
    lr: float = 0.0
    grad_norm: torch.Tensor | None = None  # total gradient norm before clipping, if computed
    metrics: dict[str, float] = field(default_factory=dict)  # latest evaluation, "val/accuracy"
    history: list[dict[str, float]] = field(default_factory=list)  # every evaluation, in order
    should_stop: bool = False
    stop_reason: str = ""
    batch_in_epoch: int = 0  # optimizer steps taken in the current epoch
    monitor: str = "val/loss"  # the metric that selects best weights and stops early
    monitor_mode: str = "min"
    counts_tokens: bool = False  # throughput is tokens/s (language models), else examples/s
    # values callbacks share, each written by one callback and read by others
    grad_norms: dict[str, float] | None = None  # per-layer norms of this step (HealthCheck)
    health_messages: list[str] = field(default_factory=list)  # new warnings of this step
    train_loss: float | None = None  # mean train loss of the last logging window (MetricsLogger)
    throughput: float | None = None  # examples or tokens per second of that window
    mfu: float | None = None  # model FLOPs utilisation of that window
    noise_scale: float | None = None  # gradient noise scale B_simple, EMA'd (DynamicBatch)
    batch_size: int | None = None  # global batch of this step, when a callback varies it
    wall_time_s: float = 0.0  # training time so far, resumed parts included
    run_dir: Path | None = None
    last_checkpoint: Path | None = None
    trainer: Any = None  # the Trainer running this state (callbacks call trainer.save(path))
