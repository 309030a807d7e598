"""Schedule: what the loop asks of a learning-rate schedule. Concrete schedules live in optim/."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Schedule:
    """Base class: ``__call__(step) -> lr`` (absolute), plus no-op ``observe`` and empty state.

    The loop calls ``schedule(step)`` before every optimizer step, ``observe(metric)`` after every
    evaluation with the monitored metric, and saves ``state_dict()`` (JSON-able) in checkpoints.
    """

    name: str = "schedule"

    def __call__(self, step: int) -> float:
        raise NotImplementedError

    def observe(self, metric: float) -> None:
        """Called after each evaluation with the monitored metric (plateau schedules use it)."""
        return None

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


class FunctionSchedule(Schedule):
    """A stateless schedule: ``lr = fn(step)``."""

    def __init__(self, name: str, fn: Callable[[int], float]) -> None:
        self.name = name
        self._fn = fn

    def __call__(self, step: int) -> float:
        if step < 0:
            raise ValueError(f"schedule step must be >= 0, got {step}")
        return float(self._fn(step))


def as_schedule(schedule: Schedule | Callable[[int], float] | None) -> Schedule | None:
    """A Schedule as is; a plain ``step -> lr`` function wrapped into one."""
    if schedule is None or isinstance(schedule, Schedule):
        return schedule
    return FunctionSchedule(getattr(schedule, "__name__", "function"), schedule)
