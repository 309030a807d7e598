"""Bootstrap confidence intervals for every scalar test metric and the loss.

The split's per-example outputs are collected once; B resamples of the N examples (drawn with
replacement, seeded) each get every metric recomputed, and the interval is the percentile one:
the (1 - level)/2 and (1 + level)/2 quantiles of the B values (Efron & Tibshirani 1993, ch. 13).
It treats the test set as a sample of the population and the model as fixed: the interval says
how much the metric would move with another test set of the same size, not with another run.

Each metric is recomputed by torchmetrics, configured as the task's own metric object:

- accuracy / precision / recall / F1 (multi-class or binary): a twin of the task's metric with
  ``multidim_average="samplewise"`` scores all resamples in one call (rows = resamples);
- AUROC: the weighted Mann-Whitney statistic of each resample (resample counts as weights),
  which is the trapezoidal ROC AUC torchmetrics computes; resamples where a class has no
  positives or no negatives are recomputed with torchmetrics itself;
- mse / mae / r2 (one target column): closed forms on the gathered resamples;
- any other scalar metric: a copy of the task's metric object, updated once per resample.

Non-scalar metrics (a confusion matrix) get no interval.
"""

from __future__ import annotations

import copy
import inspect
import warnings
from dataclasses import dataclass
from typing import Any

import torch

from bigtrain.core.task import StepOutput
from bigtrain.errors import ConfigError

from .outputs import Outputs, task_loss_per_example

# elements per gathered chunk (resamples x examples): bounds memory for large test sets
_CHUNK = 1 << 22


@dataclass(frozen=True)
class Interval:
    """A metric's value on the whole split and its bootstrap percentile interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def check_level(level: float) -> None:
    """ConfigError unless 0 < level < 1."""
    if not 0.0 < level < 1.0:
        raise ConfigError(
            f"--ci must be a confidence level between 0 and 1 (e.g. 0.95), got {level}"
        )


def resample_indices(n: int, n_resamples: int, seed: int = 0) -> torch.Tensor:
    """``(n_resamples, n)`` indices drawn uniformly with replacement (a seeded generator)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (n_resamples, n), generator=gen)


def percentile_interval(samples: torch.Tensor, level: float) -> tuple[float, float]:
    """The (1 - level)/2 and (1 + level)/2 quantiles (linear interpolation) of finite samples."""
    s = samples.double()
    s = s[torch.isfinite(s)]
    if s.numel() == 0:
        return float("nan"), float("nan")
    alpha = (1.0 - level) / 2.0
    q = torch.quantile(s, torch.tensor([alpha, 1.0 - alpha], dtype=torch.float64))
    return float(q[0]), float(q[1])


def _counts(idx: torch.Tensor, n: int) -> torch.Tensor:
    """How many times each example appears in each resample, ``(B, n)`` float64."""
    ones = torch.ones(idx.shape, dtype=torch.float64)
    return torch.zeros(idx.shape[0], n, dtype=torch.float64).scatter_add_(1, idx, ones)


def _chunks(idx: torch.Tensor, width: int = 1):
    rows = max(1, _CHUNK // max(1, idx.shape[1] * width))
    return idx.split(rows)


def _samplewise(metric: Any, preds: torch.Tensor, target: torch.Tensor, idx: torch.Tensor):
    """Stat-score metrics (accuracy, precision, recall, F1) of every resample, or None."""
    sig = inspect.signature(type(metric).__init__).parameters
    params = [p for p in sig if p not in ("self", "kwargs")]
    if "multidim_average" not in params or getattr(metric, "ignore_index", None) is not None:
        return None
    if getattr(metric, "top_k", 1) != 1 or not all(hasattr(metric, p) for p in params):
        return None
    kwargs = {p: getattr(metric, p) for p in params}
    kwargs.update(multidim_average="samplewise", validate_args=False)
    twin = type(metric)(**kwargs)
    labels = preds.argmax(dim=1) if preds.ndim == 2 else preds  # top-1 class / probability
    out = []
    for chunk in _chunks(idx):
        twin.reset()
        twin.update(labels[chunk], target[chunk])
        out.append(twin.compute().reshape(len(chunk)))
    return torch.cat(out).double()


def _weighted_auc(scores: torch.Tensor, positive: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Mann-Whitney AUC (ties count 1/2) of each row of example weights ``w`` ``(B, N)``."""
    order = torch.argsort(scores, stable=True)
    s, pos = scores[order], positive[order].double()
    ww = w[:, order]
    # weights of positives / negatives up to the end of each run of tied scores (cumsums are
    # contiguous row operations: much faster on CPU than scattering into groups)
    ends = torch.cat([torch.nonzero(s[1:] != s[:-1]).flatten(), torch.tensor([len(s) - 1])])
    cum_p = torch.cumsum(ww * pos, dim=1)[:, ends]
    cum_n = torch.cumsum(ww * (1 - pos), dim=1)[:, ends]
    wp = torch.diff(cum_p, dim=1, prepend=torch.zeros(len(w), 1, dtype=cum_p.dtype))
    wn = torch.diff(cum_n, dim=1, prepend=torch.zeros(len(w), 1, dtype=cum_n.dtype))
    below = cum_n - wn  # negatives strictly below each tie group
    return (wp * (below + 0.5 * wn)).sum(1) / (cum_p[:, -1] * cum_n[:, -1])


def _auroc(metric: Any, preds: torch.Tensor, target: torch.Tensor, idx: torch.Tensor):
    """AUROC of every resample, or None when the metric's options have no fast path here."""
    name = type(metric).__name__
    if name not in ("BinaryAUROC", "MulticlassAUROC"):
        return None
    if metric.thresholds is not None or metric.ignore_index is not None:
        return None
    w = _counts(idx, len(target))
    if name == "BinaryAUROC" and metric.max_fpr is None:
        values = _weighted_auc(preds.double(), target == 1, w)
        bad = ~torch.isfinite(values)
    elif name == "MulticlassAUROC" and metric.average in ("macro", "weighted"):
        # torchmetrics turns logits into probabilities unless all of them lie in [0, 1]
        outside = ~((preds >= 0) & (preds <= 1)).all(dim=1)
        probs = preds.double().softmax(dim=1) if bool(outside.any()) else preds.double()
        c = preds.shape[1]
        per_class = torch.stack([_weighted_auc(probs[:, k], target == k, w) for k in range(c)], 1)
        support = torch.stack([w[:, target == k].sum(1) for k in range(c)], 1)
        if metric.average == "macro":
            values = per_class.mean(1)
        else:
            values = (per_class * support).sum(1) / support.sum(1)
        same_rule = (w[:, outside].sum(1) > 0) == bool(outside.any())
        bad = ~torch.isfinite(per_class).all(1) | ~same_rule
    else:
        return None
    for b in torch.nonzero(bad).flatten().tolist():  # a resample with a one-sided class
        values[b] = _loop_one(metric, preds[idx[b]], target[idx[b]])
    return values


def _regression(metric: Any, preds: torch.Tensor, target: torch.Tensor, idx: torch.Tensor):
    """mse / mae / r2 of every resample (one target column), or None."""
    name = type(metric).__name__
    if target.ndim != 1 or getattr(metric, "num_outputs", 1) != 1:
        return None
    out = []
    for chunk in _chunks(idx):
        p, y = preds[chunk].double(), target[chunk].double()
        if name == "MeanSquaredError":
            v = ((p - y) ** 2).mean(1)
            out.append(v if metric.squared else v.sqrt())
        elif name == "MeanAbsoluteError":
            out.append((p - y).abs().mean(1))
        elif name == "R2Score" and metric.adjusted == 0:
            ss_res = ((y - p) ** 2).sum(1)
            ss_tot = ((y - y.mean(1, keepdim=True)) ** 2).sum(1)
            out.append(1 - ss_res / ss_tot)
        else:
            return None
    return torch.cat(out)


def _loop_one(metric: Any, preds: torch.Tensor, target: torch.Tensor) -> float:
    m = copy.deepcopy(metric)
    m.reset()
    m.update(preds, target)
    return float(m.compute())


def _loop(metric: Any, preds: torch.Tensor, target: torch.Tensor, idx: torch.Tensor):
    """The generic path: a copy of the metric, updated and computed once per resample."""
    m = copy.deepcopy(metric)
    values = torch.empty(len(idx), dtype=torch.float64)
    for b, rows in enumerate(idx):
        m.reset()
        m.update(preds[rows], target[rows])
        values[b] = float(m.compute())
    return values


def metric_samples(metric: Any, preds: torch.Tensor, target: torch.Tensor, idx: torch.Tensor):
    """The metric's value on each resample ``idx[b]`` of (preds, target), ``(B,)`` float64."""
    for fast in (_samplewise, _auroc, _regression):
        values = fast(metric, preds, target, idx)
        if values is not None:
            return values
    return _loop(metric, preds, target, idx)


def bootstrap_ci(
    task: Any,
    outputs: Outputs,
    *,
    level: float = 0.95,
    n_resamples: int = 1000,
    seed: int = 0,
) -> dict[str, Interval]:
    """Percentile bootstrap intervals of the loss and every scalar metric of ``task.metrics()``.

    Args:
        task: the run's Task (its full metric collection is used, as in the final test).
        outputs: the split's per-example outputs (``collect_outputs``).
        level: confidence level in (0, 1).
        n_resamples: number of bootstrap resamples B.
        seed: seeds the resampling (same seed, same intervals).

    Returns:
        ``{name: Interval}``; ``value`` is the metric on the whole split (what ``bigtrain eval``
        prints), ``low``/``high`` the interval. ``loss`` is included when the task's
        per-example loss can be recomputed (see ``task_loss_per_example``).
    """
    check_level(level)
    if n_resamples < 2:
        raise ConfigError(f"--resamples must be at least 2, got {n_resamples}")
    idx = resample_indices(outputs.n, n_resamples, seed)
    result: dict[str, Interval] = {}
    losses = task_loss_per_example(outputs, task)
    if losses is not None:
        samples = torch.cat([losses.double()[c].mean(1) for c in _chunks(idx)])
        result["loss"] = Interval(
            outputs.loss_sum / outputs.n, *percentile_interval(samples, level)
        )
    collection = task.metrics()
    if collection is None:
        return result
    preds, target = outputs.preds.float(), outputs.targets
    task.update_metrics(collection, StepOutput(torch.zeros(()), outputs.n, preds, target))
    with warnings.catch_warnings():  # torchmetrics warns on resamples missing a class
        warnings.simplefilter("ignore")
        for name, value in collection.compute().items():
            if value.numel() != 1:
                continue  # e.g. the confusion matrix
            samples = metric_samples(collection[name], preds, target, idx)
            result[name] = Interval(float(value), *percentile_interval(samples, level))
    return result
