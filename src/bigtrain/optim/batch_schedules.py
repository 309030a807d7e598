"""Batch-size schedules: step -> batch size (GPT-3 style ramps from a small to the full batch)."""

from __future__ import annotations

import math
from collections.abc import Callable

from bigtrain.errors import ConfigError
from bigtrain.optim.config import BatchSizeScheduleConfig


def _round_to(value: float, multiple: int) -> int:
    """Nearest multiple of ``multiple`` (halves round up)."""
    return int(math.floor(value / multiple + 0.5)) * multiple


def _check(cfg: BatchSizeScheduleConfig) -> int:
    """Validate a ramp config; returns its end size."""
    if cfg.end is None:
        raise ConfigError(f"batch_size_schedule.end is required for '{cfg.name}'")
    if cfg.end < cfg.start:
        raise ConfigError(
            f"batch_size_schedule.end ({cfg.end}) must be >= start ({cfg.start}) for '{cfg.name}'"
        )
    if cfg.ramp_steps <= 0:
        raise ConfigError(f"batch_size_schedule.ramp_steps must be > 0 for '{cfg.name}'")
    for key in ("start", "end"):
        if getattr(cfg, key) % cfg.multiple_of:
            raise ConfigError(
                f"batch_size_schedule.{key} ({getattr(cfg, key)}) is not a multiple of "
                f"multiple_of ({cfg.multiple_of})"
            )
    return cfg.end


def build_batch_size_schedule(cfg: BatchSizeScheduleConfig) -> Callable[[int], int]:
    """``f(step) -> batch size``.

    ``constant``: ``start`` always. ``linear_ramp``: ``start + (end - start) * step / ramp_steps``
    rounded to ``multiple_of``, ``end`` from ``ramp_steps`` on. ``step_ramp``: doubles at
    ``ramp_steps * i / n`` for ``i = 1..n`` where ``n = ceil(log2(end / start))``; the last
    doubling is capped at ``end``.
    """
    start = cfg.start
    if cfg.name == "constant":
        if cfg.end not in (None, start) or cfg.ramp_steps:
            raise ConfigError("batch_size_schedule 'constant' takes only start (and multiple_of)")
        return lambda step: start
    end = _check(cfg)
    ramp = cfg.ramp_steps

    if cfg.name == "linear_ramp":

        def linear(step: int) -> int:
            frac = min(max(step, 0) / ramp, 1.0)
            return _round_to(start + (end - start) * frac, cfg.multiple_of)

        return linear

    doublings = math.ceil(math.log2(end / start))

    def doubling(step: int) -> int:
        if doublings == 0:
            return start
        done = min(max(step, 0) * doublings // ramp, doublings)  # doublings passed by `step`
        return min(start * 2**done, end)

    return doubling
