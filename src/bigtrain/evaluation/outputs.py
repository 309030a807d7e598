"""Per-example outputs of a (model, task) over evaluation batches, collected once.

Every trust feature (bootstrap intervals, calibration, per-class table, membership inference)
works on the same tensors: the model's raw outputs (``logits``), what the task feeds its metrics
(``preds``) and the targets. The task's own ``loss()`` returns a batch mean, so per-example losses
are recomputed here from the logits.

The kind of problem is read from the task's ``StepOutput`` rather than from the task's class
(this package may not import ``bigtrain.tasks``):

- ``multiclass``: logits ``(N, C)`` with ``C >= 2`` and integer targets ``(N,)``;
- ``binary``: one logit per example and ``preds == sigmoid(logits)``;
- ``regression``: ``preds`` are the logits themselves and the targets are real numbers.

Anything else (a language model, a recommender) raises ConfigError.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.errors import ConfigError

KINDS = ("multiclass", "binary", "regression")


@dataclass
class Outputs:
    """Per-example outputs over a whole split, on the CPU in float32 (targets as given).

    Attributes:
        kind: ``"multiclass"``, ``"binary"`` or ``"regression"``.
        logits: raw model outputs, ``(N, C)`` / ``(N,)`` / ``(N,)`` or ``(N, K)``.
        preds: what the task feeds its metrics (logits, sigmoid probabilities or values).
        targets: class ids, 0/1 labels or real values.
        loss_sum: sum over batches of the task's mean loss times the batch size (so
            ``loss_sum / n`` is exactly the loss ``Trainer.evaluate`` reports).
    """

    kind: str
    logits: torch.Tensor
    preds: torch.Tensor
    targets: torch.Tensor
    loss_sum: float

    @property
    def n(self) -> int:
        return int(self.targets.shape[0])


def _to(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, (tuple, list)):
        return type(batch)(_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: _to(v, device) for k, v in batch.items()}
    return batch


def _kind(out: Any) -> str:
    """The problem kind of one StepOutput (see the module docstring), or ConfigError."""
    logits, preds, targets = out.logits, out.preds, out.targets
    if not all(isinstance(t, torch.Tensor) for t in (logits, preds, targets)):
        raise ConfigError(
            "this evaluation needs a classification, binary or regression task (per-example "
            "logits and targets); this run's task does not expose them"
        )
    floating = targets.is_floating_point()
    if logits.ndim == 2 and logits.shape[1] >= 2 and targets.ndim == 1 and not floating:
        return "multiclass"
    if logits.ndim == 1 and preds.shape == logits.shape:
        if torch.allclose(preds.float(), torch.sigmoid(logits.detach().float()), atol=1e-6):
            if not torch.allclose(preds.float(), logits.detach().float()):
                return "binary"
    if floating and preds.shape == logits.shape and torch.equal(preds, logits.detach()):
        return "regression"
    raise ConfigError(
        f"cannot tell the task's kind from its outputs (logits {tuple(logits.shape)}, "
        f"targets {tuple(targets.shape)} {targets.dtype}); classification, binary or "
        "regression tasks only"
    )


@torch.no_grad()
def collect_outputs(
    model: nn.Module,
    task: Any,
    batches: Iterable[Any],
    *,
    autocast: Callable[[], AbstractContextManager] | None = None,
) -> Outputs:
    """Run ``task.loss`` over ``batches`` in eval mode and keep every example's outputs.

    Args:
        model: the trained model (its training/eval mode is restored afterwards).
        task: a ``bigtrain.core.task.Task`` whose ``loss`` fills ``logits``, ``preds`` and
            ``targets`` (the supervised tasks do).
        batches: ``(x, y)`` batches; they are moved to the model's device.
        autocast: a context-manager factory wrapping each forward (a strategy's ``autocast``,
            so mixed-precision runs are evaluated as ``Trainer.evaluate`` does).

    Raises:
        ConfigError: the task is not a classification, binary or regression task.
        DataError: ``batches`` is empty.
    """
    from bigtrain.errors import DataError

    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    logits, preds, targets, kind, loss_sum = [], [], [], None, 0.0
    try:
        for batch in batches:
            with autocast() if autocast is not None else contextlib.nullcontext():
                out = task.loss(model, _to(batch, device))
            kind = kind or _kind(out)
            logits.append(out.logits.detach().float().cpu())
            preds.append(out.preds.detach().float().cpu())
            targets.append(out.targets.detach().cpu())
            loss_sum += float(out.loss.detach().double()) * out.n
    finally:
        model.train(was_training)
    if kind is None:
        raise DataError("no examples to evaluate (the split is empty)")
    return Outputs(kind, torch.cat(logits), torch.cat(preds), torch.cat(targets), loss_sum)


def per_example_loss(outputs: Outputs) -> torch.Tensor:
    """Each example's unsmoothed data loss, ``(N,)`` float32.

    Cross-entropy for multiclass, log loss for binary, squared error (mean over output columns)
    for regression. For one-column regression any of mse/mae/huber orders the examples the same
    way, so a rank statistic (the membership AUC) does not depend on which the task trains with.
    """
    z, y = outputs.logits, outputs.targets
    if outputs.kind == "multiclass":
        return F.cross_entropy(z, y.long(), reduction="none")
    if outputs.kind == "binary":
        return F.binary_cross_entropy_with_logits(z, y.float(), reduction="none")
    err = (z - y.float()) ** 2
    return err.reshape(len(err), -1).mean(dim=1)


def _innermost(task: Any) -> Any:
    while hasattr(task, "inner"):  # TaskWrapper chain (penalties, DP, distillation)
        task = task.inner
    return task


def task_loss_per_example(outputs: Outputs, task: Any) -> torch.Tensor | None:
    """Each example's loss as the task computes it (label smoothing, mae/huber), ``(N,)``.

    Its mean is the loss ``Trainer.evaluate`` reports; None when it is not (a wrapper that
    changes the evaluation loss), so no interval is given for a loss that was not measured.
    """
    inner = _innermost(task)
    smoothing = float(getattr(inner, "label_smoothing", 0.0) or 0.0)
    z, y = outputs.logits, outputs.targets
    if outputs.kind == "multiclass":
        losses = F.cross_entropy(z, y.long(), label_smoothing=smoothing, reduction="none")
    elif outputs.kind == "binary":
        t = y.float()
        if smoothing:
            t = t * (1 - smoothing) + 0.5 * smoothing
        losses = F.binary_cross_entropy_with_logits(z, t, reduction="none")
    else:
        fn = getattr(inner, "loss_fn", F.mse_loss)
        losses = fn(z, y.float(), reduction="none").reshape(len(z), -1).mean(dim=1)
    mean = outputs.loss_sum / max(outputs.n, 1)
    if abs(float(losses.double().mean()) - mean) > 1e-4 * max(1.0, abs(mean)):
        return None
    return losses
