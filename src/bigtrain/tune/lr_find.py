"""The learning-rate range test (Smith 2017, "Cyclical Learning Rates"; fastai's ``lr_find``).

Train a throwaway copy of the recipe's model for ``steps`` mini-batches while the learning rate
grows exponentially from ``start`` to ``end``; smooth the loss with a bias-corrected moving
average (beta 0.98) and stop once the smoothed loss exceeds 4x its best. Two suggestions:

* ``steepest``: where the smoothed loss falls fastest against log(lr);
* ``min/10``: a tenth of the LR at the smoothed loss's minimum (the loss is about to blow up
  there; fastai's older rule).

Nothing is written into a run folder: the components are built with ``run_dir=None``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bigtrain.build import Components, build
from bigtrain.config import RunConfig
from bigtrain.core.loop import Trainer
from bigtrain.errors import ConfigError

BETA = 0.98
DIVERGE_FACTOR = 4.0


@dataclass
class LRFindResult:
    """The test's curve and suggestions (None when the loss never fell)."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    smoothed: list[float] = field(default_factory=list)
    steepest: float | None = None
    min_over_10: float | None = None
    stopped_early: bool = False  # the smoothed loss passed 4x its best (or became non-finite)

    def suggestions(self) -> dict[str, float | None]:
        return {"steepest": self.steepest, "min/10": self.min_over_10}

    def to_csv(self) -> str:
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["step", "lr", "loss", "smoothed_loss"])
        for i, row in enumerate(zip(self.lrs, self.losses, self.smoothed)):
            w.writerow([i, *(f"{v:.6g}" for v in row)])
        return out.getvalue()


def step_trainer(components: Components, schedule: Any, max_steps: int) -> Trainer:
    """A Trainer over the built model, task, optimizer and data with the recipe's step settings
    (grad accumulation, clipping, strategy) and no callbacks: ``train_step`` makes real
    optimizer steps, and nothing logs, checkpoints or stops on a non-finite loss."""
    built = components.trainer
    tr = components.config.trainer
    return Trainer(
        built.state.model,
        components.task,
        built.state.optimizer,
        built.state.train_data,
        schedule=schedule,
        strategy=built.strategy,
        max_steps=max_steps,
        grad_accum=tr.grad_accum,
        clip_grad_norm=tr.clip_grad_norm,
        clip_grad_value=tr.clip_grad_value,
    )


def endless(loader) -> Iterator[Any]:
    """Batches of ``loader`` epoch after epoch."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ConfigError("the training data yields no batches")


def ramp(start: float, end: float, steps: int):
    """``step -> lr``: ``start`` at step 0 to ``end`` at step ``steps - 1``, exponentially."""
    ratio = end / start
    return lambda step: start * ratio ** (step / max(1, steps - 1))


def suggest(lrs: list[float], smoothed: list[float]) -> tuple[float | None, float | None]:
    """``(steepest, min/10)`` from a smoothed loss curve (None where it never fell).

    The steepest point is searched before the minimum of the smoothed loss and after the first
    tenth of the points, where the moving average has not settled yet.
    """
    n = len(smoothed)
    if n < 3:
        return None, None
    best = int(np.argmin(smoothed))
    if smoothed[best] >= smoothed[0]:
        return None, None  # the loss never fell below where it started
    min_over_10 = lrs[best] / 10
    skip = max(1, n // 10)
    if best - skip < 2:
        skip = 0
    log_lr = np.log10(np.asarray(lrs[: best + 1]))
    slope = np.gradient(np.asarray(smoothed[: best + 1]), log_lr)
    steepest = lrs[skip + int(np.argmin(slope[skip:]))]
    return float(steepest), float(min_over_10)


def lr_range_test(
    components: Components,
    start: float = 1e-7,
    end: float = 10.0,
    steps: int = 100,
    beta: float = BETA,
    diverge_factor: float = DIVERGE_FACTOR,
) -> LRFindResult:
    """Run the range test on built components (their model and optimizer are trained: use a
    throwaway build). See the module docstring for the rule."""
    if not (math.isfinite(start) and start > 0):
        raise ConfigError(f"--start must be a positive learning rate, got {start}")
    if not (math.isfinite(end) and end > start):
        raise ConfigError(f"--end must be above --start ({start}), got {end}")
    if steps < 5:
        raise ConfigError(f"--steps must be at least 5, got {steps}")
    schedule = ramp(start, end, steps)
    trainer = step_trainer(components, schedule, steps)
    state, strategy = trainer.state, trainer.strategy
    state.model.train()
    result = LRFindResult()
    avg, best = 0.0, math.inf
    batches = endless(state.train_data)
    for i in range(steps):
        state.batch = strategy.to_device(next(batches))
        lr = schedule(state.step)
        trainer.train_step(state.batch)
        loss = float(state.loss)
        if not math.isfinite(loss):
            result.stopped_early = True
            break
        avg = beta * avg + (1 - beta) * loss
        smoothed = avg / (1 - beta ** (i + 1))  # the average starts at 0: undo that bias
        result.lrs.append(lr)
        result.losses.append(loss)
        result.smoothed.append(smoothed)
        best = min(best, smoothed)
        if i > 0 and smoothed > diverge_factor * best:
            result.stopped_early = True
            break
    result.steepest, result.min_over_10 = suggest(result.lrs, result.smoothed)
    return result


def lr_find(
    cfg: RunConfig, start: float = 1e-7, end: float = 10.0, steps: int = 100
) -> LRFindResult:
    """Build a throwaway copy of the recipe (no run folder) and run the range test on it."""
    # the recipe's own schedule and batch-size schedule are replaced by the ramp and its batch
    components = build(cfg, run_dir=None, quiet=True)
    return lr_range_test(components, start, end, steps)


__all__ = ["LRFindResult", "endless", "lr_find", "lr_range_test", "ramp", "step_trainer", "suggest"]
