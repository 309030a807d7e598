"""Task: what a batch means. It turns (model, batch) into a loss; the loop does the rest.

Distillation, DP-SGD and penalties wrap a Task (``TaskWrapper``) rather than edit the loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

Backward = Callable[[torch.Tensor], None]


@dataclass
class StepOutput:
    """What one forward pass produced.

    ``loss`` is the mean loss over the ``n`` examples (or tokens) of the batch: the objective
    that training minimises, and in evaluation (model in eval mode) the data loss that is
    reported. ``preds``/``targets`` (detached) feed the metrics. ``logits`` is the model's raw
    output still in the autograd graph, for wrappers that add a loss term on it (distillation);
    the loop drops it after the micro-batch. ``extras`` holds scalars worth logging (e.g. an
    auxiliary load-balancing loss), as tensors or floats; evaluation averages them too.
    """

    loss: torch.Tensor
    n: int
    preds: Any = None  # a tensor, or what the task's update_metrics reads
    targets: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    logits: torch.Tensor | None = None


class Task:
    """Base class. Subclasses implement ``loss``; every other method has a working default."""

    #: name of the metric the run monitors by default (for early stopping / best checkpoint)
    monitor: str = "loss"
    monitor_mode: str = "min"

    def loss(self, model: nn.Module, batch: Any) -> StepOutput:
        raise NotImplementedError

    def forward_backward(
        self, model: nn.Module, batch: Any, scale: float, backward: Backward
    ) -> StepOutput:
        """Forward, then ``backward(loss * scale)``. Override to change how gradients are made."""
        out = self.loss(model, batch)
        backward(out.loss * scale if scale != 1.0 else out.loss)
        return out

    def metrics(self, light: bool = False):
        """A fresh ``torchmetrics.MetricCollection`` for evaluation, or None for loss only.

        ``light`` asks for the cheap subset evaluated repeatedly during training.
        """
        return None

    def update_metrics(self, metrics: Any, out: StepOutput) -> None:
        """Feed one evaluation batch's outputs to ``metrics`` (what ``metrics()`` made).

        Override when the metrics need more than (preds, targets), e.g. a query index for
        ranking metrics."""
        if out.preds is not None:
            metrics.update(out.preds.float(), out.targets)

    def derived_metrics(self, loss: float) -> dict[str, float]:
        """Metrics computed from the mean evaluation loss (e.g. perplexity = exp(loss))."""
        return {}

    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """Model outputs turned into predictions (class ids, probabilities or values)."""
        return model(x)

    def check_batch(self, model: nn.Module, batch: Any) -> None:
        """Validate one batch before training (shapes, label range); raise DataError if wrong."""
        return None


class TaskWrapper(Task):
    """A Task that delegates everything to ``inner``; subclasses override what they change.

    ``monitor``/``monitor_mode`` are read from and written to the innermost task, so a wrapper
    never holds a stale copy. ``forward_backward`` is Task's: ``self.loss`` then ``backward``, so
    a wrapper that overrides ``loss`` changes training too (a wrapper that must keep an inner
    task's own ``forward_backward`` delegates to it explicitly, as PenalizedTask does).
    """

    def __init__(self, inner: Task) -> None:
        self.inner = inner

    @property
    def monitor(self) -> str:  # type: ignore[override]
        return self.inner.monitor

    @monitor.setter
    def monitor(self, value: str) -> None:
        self.inner.monitor = value

    @property
    def monitor_mode(self) -> str:  # type: ignore[override]
        return self.inner.monitor_mode

    @monitor_mode.setter
    def monitor_mode(self, value: str) -> None:
        self.inner.monitor_mode = value

    def loss(self, model: nn.Module, batch: Any) -> StepOutput:
        return self.inner.loss(model, batch)

    def metrics(self, light: bool = False):
        return self.inner.metrics(light=light)

    def update_metrics(self, metrics: Any, out: StepOutput) -> None:
        self.inner.update_metrics(metrics, out)

    def derived_metrics(self, loss: float) -> dict[str, float]:
        return self.inner.derived_metrics(loss)

    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return self.inner.predict(model, x)

    def check_batch(self, model: nn.Module, batch: Any) -> None:
        return self.inner.check_batch(model, batch)
