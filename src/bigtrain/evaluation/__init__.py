"""Evaluation you can trust: bootstrap intervals, calibration, per-class metrics, membership.

Plain functions on tensors and on (model, task, batches); the ``bigtrain eval`` command wires
them to a run folder. This package imports no other feature package.
"""

from .bootstrap import (
    Interval,
    bootstrap_ci,
    check_level,
    percentile_interval,
    resample_indices,
)
from .calibration import (
    calibration_report,
    expected_calibration_error,
    fit_temperature,
    reliability_diagram,
)
from .membership import MembershipResult, loss_threshold_attack, membership_inference
from .outputs import Outputs, collect_outputs, per_example_loss, task_loss_per_example
from .per_class import per_class_table
from .trust import check_options, trust_results

__all__ = [
    "Interval",
    "MembershipResult",
    "Outputs",
    "bootstrap_ci",
    "calibration_report",
    "check_level",
    "check_options",
    "collect_outputs",
    "expected_calibration_error",
    "fit_temperature",
    "loss_threshold_attack",
    "membership_inference",
    "per_class_table",
    "per_example_loss",
    "percentile_interval",
    "reliability_diagram",
    "resample_indices",
    "task_loss_per_example",
    "trust_results",
]
