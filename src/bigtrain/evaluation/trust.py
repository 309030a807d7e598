"""All trust measures of one split as one JSON-ready dict (what ``bigtrain eval`` writes)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from bigtrain.errors import ConfigError

from .bootstrap import bootstrap_ci, check_level
from .calibration import DEFAULT_BINS, calibration_report
from .membership import loss_threshold_attack
from .outputs import Outputs, per_example_loss
from .per_class import per_class_table


def check_options(
    kind: str,
    *,
    ci: float | None = None,
    calibration: bool = False,
    per_class: bool = False,
) -> None:
    """ConfigError for options that do not fit a run of this ``kind`` (before any work)."""
    if ci is not None:
        check_level(ci)
    classifier = kind in ("multiclass", "binary")
    if calibration and not classifier:
        raise ConfigError(f"--calibration applies to classifiers; this is a {kind} run")
    if per_class and not classifier:
        raise ConfigError(f"--per-class applies to classifiers; this is a {kind} run")


def trust_results(
    task: Any,
    outputs: Outputs,
    *,
    ci: float | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    calibration: bool = False,
    val_outputs: Outputs | None = None,
    n_bins: int = DEFAULT_BINS,
    per_class: bool = False,
    class_names: Sequence[str] | None = None,
    train_outputs: Outputs | None = None,
) -> dict[str, Any]:
    """The requested measures of ``outputs`` (one split).

    Args:
        task: the run's Task (its metrics are bootstrapped).
        outputs: per-example outputs of the evaluated split.
        ci: confidence level of bootstrap intervals for the loss and every scalar metric.
        n_resamples, seed: the bootstrap's B and seed (also seeds the membership balancing).
        calibration: ECE, NLL and reliability bins of the split.
        val_outputs: with ``calibration``, fit a temperature on these (the validation split).
        n_bins: equal-width calibration bins.
        per_class: precision/recall/F1/support per class.
        class_names: names for the per-class rows.
        train_outputs: the training split's outputs: runs the membership attack, train
            (members) against ``outputs`` (non-members).

    Returns:
        A dict with the keys asked for: ``ci`` (``{metric: {"value", "low", "high"}}``) and
        ``bootstrap`` (its settings), ``calibration``, ``per_class``, ``membership``.
    """
    check_options(outputs.kind, ci=ci, calibration=calibration, per_class=per_class)
    out: dict[str, Any] = {}
    if ci is not None:
        intervals = bootstrap_ci(task, outputs, level=ci, n_resamples=n_resamples, seed=seed)
        out["ci"] = {k: v.as_dict() for k, v in intervals.items()}
        out["bootstrap"] = {
            "level": ci,
            "method": "percentile",
            "resamples": n_resamples,
            "seed": seed,
            "n": outputs.n,
        }
    if calibration:
        out["calibration"] = calibration_report(outputs, val_outputs, n_bins)
    if per_class:
        out["per_class"] = per_class_table(outputs, class_names)
    if train_outputs is not None:
        result = loss_threshold_attack(
            per_example_loss(train_outputs), per_example_loss(outputs), seed=seed
        )
        out["membership"] = {
            "auc": result.auc,
            "advantage": result.advantage,
            "n_members": result.n_members,
            "n_nonmembers": result.n_nonmembers,
            # the AUC's spread when nothing leaks (Mann-Whitney null): is the AUC above noise?
            "null_std": math.sqrt((2 * result.n_members + 1) / (12 * result.n_members**2)),
            "n_train": train_outputs.n,
            "n_heldout": outputs.n,
            "attack": "loss threshold (Yeom et al. 2018), balanced by seeded subsampling",
        }
    return out
