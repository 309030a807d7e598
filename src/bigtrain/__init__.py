"""bigtrain: from a YAML recipe to a trained, evaluated model.

Python API::

    from bigtrain import load_recipe, build_run
    run = build_run("digits-mlp", ["optim.lr=1e-3"], run_dir="runs/demo")
    summary = run.fit()          # trains, tests the best checkpoint, writes report.html

or the engine directly: ``Trainer(model, task, optimizer, loader, ...).fit()``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

__version__ = "0.1.0"

__all__ = [
    "BigtrainError",
    "Callback",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "Event",
    "RunConfig",
    "StepOutput",
    "Task",
    "TrainState",
    "Trainer",
    "TrainingError",
    "build_run",
    "load_recipe",
]

_LAZY = {
    "BigtrainError": "bigtrain.errors",
    "CheckpointError": "bigtrain.errors",
    "ConfigError": "bigtrain.errors",
    "DataError": "bigtrain.errors",
    "TrainingError": "bigtrain.errors",
    "Callback": "bigtrain.core.callback",
    "Event": "bigtrain.core.events",
    "StepOutput": "bigtrain.core.task",
    "Task": "bigtrain.core.task",
    "TrainState": "bigtrain.core.state",
    "Trainer": "bigtrain.core.loop",
    "RunConfig": "bigtrain.config.schema",
    "load_recipe": "bigtrain.config.loader",
    "build_run": "bigtrain.run",
}


def __getattr__(name: str):
    # lazy so that `import bigtrain` (and `bigtrain --help`) stays fast
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'bigtrain' has no attribute {name!r}")


if TYPE_CHECKING:
    from bigtrain.config.loader import load_recipe
    from bigtrain.config.schema import RunConfig
    from bigtrain.core.callback import Callback
    from bigtrain.core.events import Event
    from bigtrain.core.loop import Trainer
    from bigtrain.core.state import TrainState
    from bigtrain.core.task import StepOutput, Task
    from bigtrain.errors import (
        BigtrainError,
        CheckpointError,
        ConfigError,
        DataError,
        TrainingError,
    )
    from bigtrain.run import build_run
