"""TrainState: everything the loop and callbacks share, in one plain object."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from bigtrain.core.task import StepOutput, Task


@runtime_checkable
class BatchSource(Protocol):
    """What the loop trains from: an iterable of batches with a resumable position.

    ``iter()`` yields the rest of the current epoch (from the saved position after a resume) and
    then advances to the next epoch. ``batch_size`` may be changed between batches (batch-size
    schedules). ``state_dict`` returns tensors and JSON-able values only.
    """

    batch_size: int

    def __iter__(self) -> Iterator[Any]: ...
    def __len__(self) -> int: ...
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
    schedule: Any = None
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
    run_dir: Path | None = None
    last_checkpoint: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # room for callbacks to share values
    trainer: Any = None  # the Trainer running this state (callbacks call trainer.save(path))
