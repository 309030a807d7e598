"""Calibration of classifiers: ECE, reliability-diagram data and temperature scaling.

A classifier is calibrated when, of the examples it gives confidence 0.8, 80% are right. The
expected calibration error (ECE) bins the confidences into equal-width bins and averages
|accuracy - confidence| over the bins, weighted by how many examples each holds.

Confidence and "right" follow torchmetrics' ``CalibrationError``: for multi-class, the top
softmax probability and whether the top class is the label; for binary, the probability of the
positive class and whether the label is 1 (so the binary diagram plots the observed frequency of
1s against the predicted probability). The binning is torchmetrics' too (bins ``[k/M, (k+1)/M)``
and an extra one for a confidence of exactly 1), so ``expected_calibration_error`` equals
``CalibrationError(n_bins=M)``; the diagram folds that extra bin into the top one.

Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks") divides the
logits by one scalar T > 0 fitted to minimise the validation NLL; it changes no prediction.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from bigtrain.errors import ConfigError

from .outputs import Outputs

DEFAULT_BINS = 15


def _check_classifier(outputs: Outputs, what: str) -> None:
    if outputs.kind not in ("multiclass", "binary"):
        raise ConfigError(f"{what} applies to classifiers; this is a {outputs.kind} run")


def probabilities(logits: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """Softmax rows (multiclass) or sigmoid (binary) of ``logits / temperature``."""
    z = logits.double() / temperature
    return torch.softmax(z, dim=1) if kind == "multiclass" else torch.sigmoid(z)


def confidences(probs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, correct as 0/1) per example, as torchmetrics' CalibrationError defines them."""
    if probs.ndim == 2:
        conf, pred = probs.max(dim=1)
        return conf, (pred == targets).double()
    return probs, targets.double()


def _bins(conf: torch.Tensor, correct: torch.Tensor, n_bins: int):
    """Counts, summed confidence and summed correctness in torchmetrics' n_bins + 1 buckets."""
    bounds = torch.linspace(0, 1, n_bins + 1, dtype=conf.dtype)
    index = torch.bucketize(conf, bounds, right=True) - 1
    size = n_bins + 1
    count = torch.zeros(size, dtype=torch.float64).index_add_(0, index, torch.ones_like(conf))
    conf_sum = torch.zeros(size, dtype=torch.float64).index_add_(0, index, conf.double())
    corr_sum = torch.zeros(size, dtype=torch.float64).index_add_(0, index, correct.double())
    return count, conf_sum, corr_sum


def expected_calibration_error(
    probs: torch.Tensor, targets: torch.Tensor, n_bins: int = DEFAULT_BINS
) -> float:
    """ECE (L1, equal-width bins) of probabilities ``(N, C)`` or ``(N,)`` against the targets."""
    if n_bins < 1:
        raise ConfigError(f"--bins must be at least 1, got {n_bins}")
    conf, correct = confidences(probs.double(), targets)
    count, conf_sum, corr_sum = _bins(conf, correct, n_bins)
    # sum over bins of (n_b / N) * |acc_b - conf_b| = sum |correct_b - conf_b| / N
    return float((corr_sum - conf_sum).abs().sum() / count.sum())


def reliability_diagram(
    probs: torch.Tensor, targets: torch.Tensor, n_bins: int = DEFAULT_BINS
) -> list[dict[str, float]]:
    """One row per equal-width bin: its bounds, count, mean confidence and accuracy.

    Empty bins have ``count`` 0 and ``confidence``/``accuracy`` None.
    """
    conf, correct = confidences(probs.double(), targets)
    count, conf_sum, corr_sum = _bins(conf, correct, n_bins)
    # fold torchmetrics' "exactly 1.0" bucket into the top bin [1 - 1/M, 1]
    for t in (count, conf_sum, corr_sum):
        t[n_bins - 1] += t[n_bins]
    rows = []
    for k in range(n_bins):
        c = float(count[k])
        rows.append(
            {
                "lower": k / n_bins,
                "upper": (k + 1) / n_bins,
                "count": int(c),
                "confidence": float(conf_sum[k] / c) if c else None,
                "accuracy": float(corr_sum[k] / c) if c else None,
            }
        )
    return rows


def nll(logits: torch.Tensor, targets: torch.Tensor, kind: str, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets under ``logits / temperature``."""
    z = logits.double() / temperature
    if kind == "multiclass":
        return float(F.cross_entropy(z, targets.long()))
    return float(F.binary_cross_entropy_with_logits(z, targets.double()))


def all_correct(logits: torch.Tensor, targets: torch.Tensor, kind: str) -> bool:
    """Whether every example is on the right side (strictly): then NLL(z / T) falls as T -> 0."""
    if kind == "multiclass":
        top2 = logits.topk(2, dim=1).values
        right = logits.gather(1, targets.long().unsqueeze(1)).squeeze(1) == top2[:, 0]
        return bool((right & (top2[:, 0] > top2[:, 1])).all())
    sign = torch.where(targets.bool(), logits, -logits)
    return bool((sign > 0).all())


def fit_temperature(
    logits: torch.Tensor, targets: torch.Tensor, kind: str, max_iter: int = 200
) -> float:
    """The temperature T minimising the NLL of ``logits / T`` (LBFGS on log T, as Guo et al.).

    The NLL is convex in 1/T; optimising log T keeps T positive. The result is clipped to
    [0.01, 100]: a split the model gets entirely right has its optimum at T -> 0.
    """
    z = logits.detach().double()
    y = targets.long() if kind == "multiclass" else targets.double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [log_t], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        opt.zero_grad()
        scaled = z / log_t.exp()
        if kind == "multiclass":
            loss = F.cross_entropy(scaled, y)
        else:
            loss = F.binary_cross_entropy_with_logits(scaled, y)
        loss.backward()
        return loss

    opt.step(closure)
    return float(log_t.detach().clamp(-4.6052, 4.6052).exp())


def _summary(outputs: Outputs, temperature: float, n_bins: int) -> dict[str, Any]:
    probs = probabilities(outputs.logits, outputs.kind, temperature)
    return {
        "nll": nll(outputs.logits, outputs.targets, outputs.kind, temperature),
        "ece": expected_calibration_error(probs, outputs.targets, n_bins),
        "reliability": reliability_diagram(probs, outputs.targets, n_bins),
    }


def calibration_report(
    test: Outputs, val: Outputs | None = None, n_bins: int = DEFAULT_BINS
) -> dict[str, Any]:
    """NLL, ECE and reliability bins on ``test``; with ``val``, also after temperature scaling.

    Returns:
        ``{"n_bins", "n", "before": {"nll", "ece", "reliability"}}`` and, when ``val`` is given,
        ``"temperature"`` (fitted on ``val``), ``"n_val"`` and ``"after"`` (the same measures on
        ``test`` with the logits divided by the temperature). When the model gets every ``val``
        example right no temperature minimises the NLL: ``"temperature"`` is None, there is no
        ``"after"`` and ``"temperature_note"`` says why.

    Raises:
        ConfigError: a regression run, or fewer than one bin.
    """
    _check_classifier(test, "calibration")
    if n_bins < 1:
        raise ConfigError(f"--bins must be at least 1, got {n_bins}")
    report: dict[str, Any] = {"n_bins": n_bins, "n": test.n, "before": _summary(test, 1.0, n_bins)}
    if val is not None:
        _check_classifier(val, "temperature scaling")
        if all_correct(val.logits, val.targets, val.kind):
            report.update(
                temperature=None,
                n_val=val.n,
                temperature_note=f"not fitted: all {val.n} validation examples are classified "
                "correctly, so their NLL keeps falling as T -> 0 (no temperature minimises it)",
            )
        else:
            t = fit_temperature(val.logits, val.targets, val.kind)
            report.update(temperature=t, n_val=val.n, after=_summary(test, t, n_bins))
    return report
