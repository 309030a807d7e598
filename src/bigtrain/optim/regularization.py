"""L1 / L2 / Elastic-Net penalties as plain functions, plus a Task wrapper that adds them.

The penalised objective is ``loss + l1 * sum|w| + l2 * sum w^2`` (no 1/2 on the L2 term, so its
gradient is ``2 * l2 * w``). Both coefficients non-zero is the Elastic Net. Unlike optimizer
weight decay, a penalty is part of the loss: it is logged, and adaptive optimizers rescale its
gradient like any other.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import torch
from torch import nn

from bigtrain.core.task import StepOutput, Task, TaskWrapper
from bigtrain.errors import ConfigError, TrainingError

APPLY_TO = ("weights", "all")


def penalty_params(model: nn.Module, apply_to: str = "weights") -> list[nn.Parameter]:
    """Trainable parameters to penalise: ``"weights"`` = ``ndim >= 2`` only, ``"all"`` = every one."""
    if apply_to not in APPLY_TO:
        raise ConfigError(
            f"regularization.apply_to '{apply_to}' is unknown; choose one of: {', '.join(APPLY_TO)}"
        )
    return [p for p in model.parameters() if p.requires_grad and (apply_to == "all" or p.ndim >= 2)]


def l1_penalty(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum |w|`` over all tensors (a 0-dim tensor; 0 when ``params`` is empty)."""
    terms = [p.abs().sum() for p in params]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def l2_penalty(params: Iterable[torch.Tensor]) -> torch.Tensor:
    """``sum w^2`` over all tensors (no 1/2 factor)."""
    terms = [p.pow(2).sum() for p in params]
    return torch.stack(terms).sum() if terms else torch.zeros(())


def penalty(params: Iterable[torch.Tensor], l1: float = 0.0, l2: float = 0.0) -> torch.Tensor:
    """``l1 * sum|w| + l2 * sum w^2`` (Elastic Net when both are non-zero)."""
    params = list(params)
    total = torch.zeros((), device=params[0].device) if params else torch.zeros(())
    if l1:
        total = total + l1 * l1_penalty(params)
    if l2:
        total = total + l2 * l2_penalty(params)
    return total


class PenalizedTask(TaskWrapper):
    """Wraps a Task so its loss includes the penalty; ``extras["penalty"]`` holds the penalty.

    Everything else (metrics, derived metrics, predict, check_batch, monitor) is the inner
    task's. Evaluation reports the inner task's loss (the penalty is not part of the data's fit).
    """

    def __init__(
        self, task: Task, params: Iterable[nn.Parameter], l1: float = 0.0, l2: float = 0.0
    ) -> None:
        if l1 < 0 or l2 < 0:
            raise ConfigError(f"regularization.l1/l2 must be >= 0, got l1={l1}, l2={l2}")
        super().__init__(task)
        self.params = list(params)
        self.l1, self.l2 = l1, l2

    @property
    def task(self) -> Task:
        return self.inner

    def penalty(self) -> torch.Tensor:
        """The current penalty (part of the autograd graph)."""
        return penalty(self.params, self.l1, self.l2)

    def _with_penalty(self, out: StepOutput, pen: torch.Tensor, loss: torch.Tensor) -> StepOutput:
        return replace(out, loss=loss, extras={**out.extras, "penalty": pen.detach()})

    def loss(self, model: nn.Module, batch: Any) -> StepOutput:
        out = self.inner.loss(model, batch)
        if not model.training:  # evaluation: the data loss (the penalty does not vary by batch)
            return out
        pen = self.penalty()
        return self._with_penalty(out, pen, out.loss + pen)

    def forward_backward(self, model: nn.Module, batch: Any, scale: float, backward) -> StepOutput:
        """The inner task's forward_backward, with the penalty added to what it backpropagates
        (one backward call, so wrappers of the inner task keep working)."""
        seen: list[torch.Tensor] = []

        def backward_with_penalty(loss: torch.Tensor) -> None:
            pen = self.penalty()
            seen.append(pen)
            backward(loss + pen * scale)

        out = self.inner.forward_backward(model, batch, scale, backward_with_penalty)
        if not seen:
            raise TrainingError(
                f"{type(self.inner).__name__}.forward_backward never called backward(); "
                "PenalizedTask cannot add the penalty to it"
            )
        return self._with_penalty(out, seen[0], out.loss + seen[0].detach())
