"""Supervised tasks on (x, y) batches: multi-class, binary (log loss) and regression."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.core.task import StepOutput, Task
from bigtrain.errors import ConfigError, DataError, did_you_mean

# evaluated every epoch while training: the cheap ones (AUROC and the confusion matrix cost
# ~3 ms per evaluation, as much as 3 training steps of a small MLP); the final test gets all
_LIGHT = ("accuracy", "f1", "mse", "mae", "r2")


def _collection(
    available: dict,
    names: list[str] | None,
    defaults: list[str],
    task: str,
    light: bool = False,
    monitor: str = "",
):
    import torchmetrics  # imported here: it takes ~4 s (it loads transformers, scipy, matplotlib)

    if names is None:
        names = [n for n in defaults if n in _LIGHT or n == monitor] if light else defaults
    chosen = {}
    for name in names:
        if name not in available:
            hint = did_you_mean(name, available)
            raise ConfigError(
                f"task.metrics: '{name}' is not a {task} metric{hint}; "
                f"choose from {', '.join(sorted(available))}"
            )
        chosen[name] = available[name]()
    return torchmetrics.MetricCollection(chosen) if chosen else None


class ClassificationTask(Task):
    """Cross-entropy over ``num_classes`` logits (optionally with label smoothing)."""

    monitor = "accuracy"
    monitor_mode = "max"
    output_size_per_class = True

    def __init__(
        self, num_classes: int, label_smoothing: float = 0.0, metrics: list[str] | None = None
    ) -> None:
        self.num_classes = num_classes
        self.label_smoothing = label_smoothing
        self.metric_names = metrics
        self.metrics()  # validate names now, not at the first evaluation

    def loss(self, model: nn.Module, batch) -> StepOutput:
        x, y = batch
        logits = model(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return StepOutput(loss, y.shape[0], logits.detach(), y, logits=logits)

    def metrics(self, light: bool = False):
        import torchmetrics

        c = self.num_classes
        available = {
            "accuracy": lambda: torchmetrics.Accuracy("multiclass", num_classes=c),
            "f1": lambda: torchmetrics.F1Score("multiclass", num_classes=c, average="macro"),
            "precision": lambda: torchmetrics.Precision(
                "multiclass", num_classes=c, average="macro"
            ),
            "recall": lambda: torchmetrics.Recall("multiclass", num_classes=c, average="macro"),
            "auroc": lambda: torchmetrics.AUROC("multiclass", num_classes=c),
            "confusion_matrix": lambda: torchmetrics.ConfusionMatrix("multiclass", num_classes=c),
            # opt-in (task.metrics: [..., ece]): expected calibration error, 15 equal-width bins
            "ece": lambda: torchmetrics.CalibrationError("multiclass", num_classes=c, n_bins=15),
        }
        defaults = ["accuracy", "f1", "precision", "recall", "auroc", "confusion_matrix"]
        return _collection(
            available, self.metric_names, defaults, "classification", light, self.monitor
        )

    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(model(x).float(), dim=-1)

    def check_batch(self, model: nn.Module, batch) -> None:
        x, y = batch
        with torch.no_grad():
            out = model(x[:2])
        if out.ndim != 2 or out.shape[-1] != self.num_classes:
            raise DataError(
                f"model outputs shape {tuple(out.shape)}, expected (batch, {self.num_classes})"
            )
        lo, hi = int(y.min()), int(y.max())
        if lo < 0 or hi >= self.num_classes:
            raise DataError(
                f"labels range {lo}..{hi} but the model has {self.num_classes} classes "
                f"(labels must be 0..{self.num_classes - 1})"
            )


class BinaryClassificationTask(Task):
    """One logit per example, binary cross-entropy (log loss) on 0/1 labels."""

    monitor = "auroc"
    monitor_mode = "max"

    def __init__(self, label_smoothing: float = 0.0, metrics: list[str] | None = None) -> None:
        self.label_smoothing = label_smoothing
        self.metric_names = metrics
        self.metrics()

    def loss(self, model: nn.Module, batch) -> StepOutput:
        x, y = batch
        logits = model(x).squeeze(-1)
        target = y.to(logits.dtype)
        if self.label_smoothing:
            target = target * (1 - self.label_smoothing) + 0.5 * self.label_smoothing
        loss = F.binary_cross_entropy_with_logits(logits, target)
        return StepOutput(loss, y.shape[0], torch.sigmoid(logits.detach()), y, logits=logits)

    def metrics(self, light: bool = False):
        import torchmetrics

        available = {
            "accuracy": lambda: torchmetrics.Accuracy("binary"),
            "f1": lambda: torchmetrics.F1Score("binary"),
            "precision": lambda: torchmetrics.Precision("binary"),
            "recall": lambda: torchmetrics.Recall("binary"),
            "auroc": lambda: torchmetrics.AUROC("binary"),
            "confusion_matrix": lambda: torchmetrics.ConfusionMatrix("binary"),
            "ece": lambda: torchmetrics.CalibrationError("binary", n_bins=15),  # opt-in
        }
        defaults = ["accuracy", "f1", "precision", "recall", "auroc", "confusion_matrix"]
        return _collection(
            available, self.metric_names, defaults, "binary classification", light, self.monitor
        )

    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(model(x).float().squeeze(-1))

    def check_batch(self, model: nn.Module, batch) -> None:
        x, y = batch
        with torch.no_grad():
            out = model(x[:2])
        if out.shape[-1] != 1:
            raise DataError(f"model outputs shape {tuple(out.shape)}, expected (batch, 1)")
        bad = y[(y != 0) & (y != 1)]
        if bad.numel():
            raise DataError(f"binary labels must be 0 or 1, found {bad[0].item()}")


class RegressionTask(Task):
    """Real-valued targets with mse, mae or huber loss."""

    monitor = "mse"
    monitor_mode = "min"
    _LOSSES = {"mse": F.mse_loss, "mae": F.l1_loss, "huber": F.huber_loss}

    def __init__(self, loss: str = "mse", metrics: list[str] | None = None) -> None:
        if loss not in self._LOSSES:
            raise ConfigError(
                f"task.loss '{loss}' is not a regression loss; choose mse, mae or huber"
            )
        self.loss_fn = self._LOSSES[loss]
        self.metric_names = metrics
        self.metrics()

    def loss(self, model: nn.Module, batch) -> StepOutput:
        x, y = batch
        pred = model(x)
        if y.ndim == 1:
            pred = pred.squeeze(-1)
        return StepOutput(self.loss_fn(pred, y), y.shape[0], pred.detach(), y, logits=pred)

    def metrics(self, light: bool = False):
        import torchmetrics

        available = {
            "mse": torchmetrics.MeanSquaredError,
            "mae": torchmetrics.MeanAbsoluteError,
            "r2": torchmetrics.R2Score,
        }
        return _collection(
            available, self.metric_names, ["mse", "mae", "r2"], "regression", light, self.monitor
        )

    def predict(self, model: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = model(x).float()
        return out.squeeze(-1) if out.shape[-1] == 1 else out

    def check_batch(self, model: nn.Module, batch) -> None:
        x, y = batch
        with torch.no_grad():
            out = model(x[:2])
        width = 1 if y.ndim == 1 else y.shape[-1]
        if out.shape[-1] != width:
            raise DataError(
                f"model outputs {out.shape[-1]} values per example, targets have {width}"
            )
