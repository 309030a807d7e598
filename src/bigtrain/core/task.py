"""Task: what a batch means. It turns (model, batch) into a loss; the loop does the rest.

Distillation, DP-SGD and penalties wrap a Task rather than edit the loop.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class StepOutput:
    """What one forward pass produced.

    ``loss`` is the mean loss over the ``n`` examples (or tokens) of the batch; ``extras`` holds
    scalars worth logging (e.g. an auxiliary load-balancing loss), as tensors or floats.
    """

    loss: torch.Tensor
    n: int
    preds: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)


class Task:
    """Base class. Subclasses implement ``loss``; ``metrics`` and ``predict`` are optional."""

    #: name of the metric the run monitors by default (for early stopping / best checkpoint)
    monitor: str = "loss"
    monitor_mode: str = "min"

    def loss(self, model: nn.Module, batch: Any) -> StepOutput:
        raise NotImplementedError

    def forward_backward(self, model: nn.Module, batch: Any, scale: float, backward) -> StepOutput:
        """Forward, then ``backward(loss * scale)``. Override to change how gradients are made."""
        out = self.loss(model, batch)
        backward(out.loss * scale if scale != 1.0 else out.loss)
        return out

    def metrics(self, light: bool = False):
        """A fresh ``torchmetrics.MetricCollection`` for evaluation, or None for loss only.

        ``light`` asks for the cheap subset evaluated repeatedly during training.
        """
        return None

    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Model outputs turned into predictions (class ids, probabilities or values)."""
        return model(x)

    def check_batch(self, model: nn.Module, batch: Any) -> None:
        """Validate one batch before training (shapes, label range); raise DataError if wrong."""
        return None
