"""Optimizers, LR schedules, batch-size schedules, parameter groups and loss penalties."""

from bigtrain.optim.batch_schedules import build_batch_size_schedule
from bigtrain.optim.config import (
    BatchSizeScheduleConfig,
    OptimConfig,
    RegularizationConfig,
    ScheduleConfig,
)
from bigtrain.optim.optimizers import OPTIMIZERS, build_optimizer, make_optimizer
from bigtrain.optim.param_groups import param_groups
from bigtrain.optim.regularization import PenalizedTask, penalty_params
from bigtrain.optim.schedules import SCHEDULES, Schedule, build_schedule

__all__ = [
    "OPTIMIZERS",
    "SCHEDULES",
    "BatchSizeScheduleConfig",
    "OptimConfig",
    "PenalizedTask",
    "RegularizationConfig",
    "Schedule",
    "ScheduleConfig",
    "build_batch_size_schedule",
    "build_optimizer",
    "build_schedule",
    "make_optimizer",
    "param_groups",
    "penalty_params",
]
