"""Learning-rate schedules as functions of the optimizer step.

``schedule(step)`` is the absolute LR for optimizer step ``step`` (0-based); the loop sets
``group["lr"] = schedule(step) * group["lr_scale"]`` before ``optimizer.step()``. Pure schedules
keep no state; ``reduce_on_plateau`` changes its LR in ``observe(metric)`` and saves that in a
JSON-able ``state_dict``.

Each registry entry is a factory ``make(base_lr, total_steps, *, <fields>) -> Schedule`` whose
keyword-only parameters are exactly the ``ScheduleConfig`` fields it takes.
"""

from __future__ import annotations

import bisect
import inspect
import math
from collections.abc import Callable
from typing import Any, Literal

from bigtrain._registry import Registry
from bigtrain.core.schedule import FunctionSchedule, Schedule
from bigtrain.errors import ConfigError
from bigtrain.optim.config import ScheduleConfig

SCHEDULES: Registry[Callable[..., Schedule]] = Registry("lr schedule")


def _warmup_factor(step: int, warmup_steps: int) -> float:
    """Linear warmup from 1/(W+1) to W/(W+1) over steps 0..W-1, then 1 (nanoGPT's get_lr)."""
    return (step + 1) / (warmup_steps + 1) if step < warmup_steps else 1.0


def _need_total(name: str, total_steps: int, warmup_steps: int = 0) -> None:
    if total_steps <= 0:
        raise ConfigError(f"lr schedule '{name}' needs the total number of steps (> 0)")
    if warmup_steps >= total_steps:
        raise ConfigError(
            f"schedule.warmup_steps ({warmup_steps}) must be less than the total steps "
            f"({total_steps}) for '{name}'"
        )


@SCHEDULES.register("constant")
def constant(base_lr: float, total_steps: int, *, warmup_steps: int = 0) -> Schedule:
    """``base_lr`` (after an optional linear warmup)."""
    return FunctionSchedule("constant", lambda s: base_lr * _warmup_factor(s, warmup_steps))


@SCHEDULES.register("step")
def step(base_lr: float, total_steps: int, *, step_size: int, gamma: float = 0.1) -> Schedule:
    """``base_lr * gamma ** (step // step_size)`` (torch StepLR)."""
    return FunctionSchedule("step", lambda s: base_lr * gamma ** (s // step_size))


@SCHEDULES.register("multistep")
def multistep(
    base_lr: float, total_steps: int, *, milestones: tuple[int, ...], gamma: float = 0.1
) -> Schedule:
    """``base_lr * gamma ** (number of milestones <= step)`` (torch MultiStepLR)."""
    marks = sorted(milestones)
    return FunctionSchedule("multistep", lambda s: base_lr * gamma ** bisect.bisect_right(marks, s))


@SCHEDULES.register("exponential")
def exponential(base_lr: float, total_steps: int, *, gamma: float) -> Schedule:
    """``base_lr * gamma ** step`` (torch ExponentialLR)."""
    return FunctionSchedule("exponential", lambda s: base_lr * gamma**s)


@SCHEDULES.register("warmup_cosine")
def warmup_cosine(
    base_lr: float, total_steps: int, *, warmup_steps: int = 0, min_lr: float = 0.0
) -> Schedule:
    """Linear warmup, then half a cosine from ``base_lr`` (at ``warmup_steps``) to ``min_lr``
    (at ``total_steps`` and after), as nanoGPT's ``get_lr``."""
    _need_total("warmup_cosine", total_steps, warmup_steps)

    def lr(s: int) -> float:
        if s < warmup_steps:
            return base_lr * _warmup_factor(s, warmup_steps)
        if s >= total_steps:
            return min_lr
        ratio = (s - warmup_steps) / (total_steps - warmup_steps)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (base_lr - min_lr)

    return FunctionSchedule("warmup_cosine", lr)


def _linear_decay(s: int, start: int, end: int, base_lr: float, min_lr: float) -> float:
    if s >= end:
        return min_lr
    return base_lr + (min_lr - base_lr) * (s - start) / (end - start)


@SCHEDULES.register("linear")
def linear(
    base_lr: float, total_steps: int, *, warmup_steps: int = 0, min_lr: float = 0.0
) -> Schedule:
    """Linear warmup, then a straight line from ``base_lr`` to ``min_lr`` at ``total_steps``
    (torch LinearLR with ``end_factor = min_lr / base_lr`` when there is no warmup)."""
    _need_total("linear", total_steps, warmup_steps)

    def lr(s: int) -> float:
        if s < warmup_steps:
            return base_lr * _warmup_factor(s, warmup_steps)
        return _linear_decay(s, warmup_steps, total_steps, base_lr, min_lr)

    return FunctionSchedule("linear", lr)


@SCHEDULES.register("wsd")
def wsd(
    base_lr: float,
    total_steps: int,
    *,
    warmup_steps: int = 0,
    min_lr: float = 0.0,
    decay_fraction: float = 0.2,
) -> Schedule:
    """Warmup-stable-decay: warmup, flat at ``base_lr``, then linear decay to ``min_lr`` over the
    last ``decay_fraction`` of the steps (reached at ``total_steps``)."""
    _need_total("wsd", total_steps, warmup_steps)
    decay_start = total_steps - round(decay_fraction * total_steps)
    if decay_start < warmup_steps or decay_start >= total_steps:
        raise ConfigError(
            f"schedule.decay_fraction {decay_fraction} gives a decay phase of "
            f"{total_steps - decay_start} steps starting at {decay_start}; it must be >= 1 step "
            f"and start after the {warmup_steps} warmup steps"
        )

    def lr(s: int) -> float:
        if s < warmup_steps:
            return base_lr * _warmup_factor(s, warmup_steps)
        if s < decay_start:
            return base_lr
        return _linear_decay(s, decay_start, total_steps, base_lr, min_lr)

    return FunctionSchedule("wsd", lr)


@SCHEDULES.register("one_cycle")
def one_cycle(
    base_lr: float,
    total_steps: int,
    *,
    pct_start: float = 0.3,
    div_factor: float = 25.0,
    final_div_factor: float = 1e4,
    anneal_strategy: Literal["cos", "linear"] = "cos",
) -> Schedule:
    """torch OneCycleLR (two phases) with ``max_lr = base_lr``: from ``base_lr / div_factor`` up
    to ``base_lr`` over ``pct_start`` of the steps, then down to ``initial / final_div_factor`` at
    step ``total_steps - 1``. Momentum is not cycled."""
    _need_total("one_cycle", total_steps)
    initial = base_lr / div_factor
    final = initial / final_div_factor
    peak_step = float(pct_start * total_steps) - 1  # torch's phase boundary
    if peak_step <= 0 or peak_step >= total_steps - 1:
        raise ConfigError(
            f"schedule.pct_start {pct_start} with {total_steps} steps leaves an empty phase; "
            "use more steps or a pct_start nearer 0.5"
        )

    def anneal(start: float, end: float, pct: float) -> float:
        if anneal_strategy == "cos":
            return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1)
        return (end - start) * pct + start

    def lr(s: int) -> float:
        s = min(s, total_steps - 1)  # torch raises past the end; we hold the final LR
        if s <= peak_step:
            return anneal(initial, base_lr, s / peak_step)
        return anneal(base_lr, final, (s - peak_step) / (total_steps - 1 - peak_step))

    return FunctionSchedule("one_cycle", lr)


class PlateauSchedule(Schedule):
    """torch ReduceLROnPlateau as a schedule: ``lr *= factor`` after more than ``patience``
    evaluations without improvement (then ``cooldown`` evaluations of rest), never below
    ``min_lr``. ``observe(metric)`` is one torch ``scheduler.step(metric)``."""

    name = "reduce_on_plateau"
    _EPS = 1e-8  # torch: reductions smaller than this are skipped

    def __init__(
        self,
        base_lr: float,
        *,
        mode: str = "min",
        factor: float = 0.1,
        patience: int = 10,
        threshold: float = 1e-4,
        threshold_mode: str = "rel",
        cooldown: int = 0,
        min_lr: float = 0.0,
    ) -> None:
        self.mode, self.factor, self.patience = mode, factor, patience
        self.threshold, self.threshold_mode = threshold, threshold_mode
        self.cooldown, self.min_lr = cooldown, min_lr
        self.lr = base_lr
        self.best: float | None = None  # None = nothing observed yet (torch uses +-inf)
        self.num_bad = 0
        self.cooldown_left = 0

    def __call__(self, step: int) -> float:
        return self.lr

    def _is_better(self, value: float) -> bool:
        sign = 1.0 if self.mode == "max" else -1.0
        best = -sign * math.inf if self.best is None else self.best
        if self.threshold_mode == "rel":
            return sign * value > sign * best * (1.0 + sign * self.threshold)
        return sign * value > sign * best + self.threshold

    def observe(self, metric: float) -> None:
        value = float(metric)
        if self._is_better(value):
            self.best, self.num_bad = value, 0
        else:
            self.num_bad += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.num_bad = 0  # bad evaluations during cooldown don't count
        if self.num_bad > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self._EPS:
                self.lr = new_lr
            self.cooldown_left, self.num_bad = self.cooldown, 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "lr": self.lr,
            "best": self.best,
            "num_bad": self.num_bad,
            "cooldown_left": self.cooldown_left,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.lr = float(state["lr"])
        self.best = None if state["best"] is None else float(state["best"])
        self.num_bad = int(state["num_bad"])
        self.cooldown_left = int(state["cooldown_left"])


@SCHEDULES.register("reduce_on_plateau")
def reduce_on_plateau(
    base_lr: float,
    total_steps: int,
    *,
    mode: Literal["min", "max"] = "min",
    factor: float = 0.1,
    patience: int = 10,
    threshold: float = 1e-4,
    threshold_mode: Literal["rel", "abs"] = "rel",
    cooldown: int = 0,
    min_lr: float = 0.0,
) -> Schedule:
    """Cut the LR by ``factor`` when the observed metric stops improving (torch semantics)."""
    return PlateauSchedule(
        base_lr,
        mode=mode,
        factor=factor,
        patience=patience,
        threshold=threshold,
        threshold_mode=threshold_mode,
        cooldown=cooldown,
        min_lr=min_lr,
    )


def build_schedule(cfg: ScheduleConfig, base_lr: float, total_steps: int) -> Schedule:
    """The schedule named by ``cfg``; ConfigError for fields it doesn't take or needs but lacks."""
    make = SCHEDULES.get(cfg.name)
    params = {
        p.name: p
        for p in inspect.signature(make).parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY
    }
    accepted = list(params) + (["min_lr_ratio"] if "min_lr" in params else [])
    kwargs: dict[str, Any] = {}
    for field, info in ScheduleConfig.model_fields.items():
        value = getattr(cfg, field)
        if field == "name" or value == info.default:
            continue
        if field not in accepted:
            takes = ", ".join(accepted) or "nothing"
            raise ConfigError(
                f"schedule.{field} does not apply to '{cfg.name}' (it takes: {takes})"
            )
        kwargs[field] = value
    if "min_lr_ratio" in kwargs:
        kwargs["min_lr"] = kwargs.pop("min_lr_ratio") * base_lr
    missing = [n for n, p in params.items() if p.default is p.empty and n not in kwargs]
    if missing:
        raise ConfigError(f"schedule.{missing[0]} is required for lr schedule '{cfg.name}'")
    if kwargs.get("min_lr", 0.0) > base_lr:
        raise ConfigError(f"schedule.min_lr ({kwargs['min_lr']}) is above the base lr ({base_lr})")
    return make(base_lr, total_steps, **kwargs)
