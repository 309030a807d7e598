"""``trainer.compile: auto``: compile only when the run's remaining wall time repays compiling.

The run starts eager. After a few warm-up steps the callback times ``TIMED_STEPS`` steps and
estimates what is left: ``remaining_steps x median step time``. Compiling saves a fraction
``1 - 1 / COMPILE_SPEEDUP`` of that and costs ``COMPILE_COST_S`` once, so the model is compiled
(in place, so checkpoints keep plain parameter names) when the saving exceeds the cost. A resumed
run re-decides on what is left of it: its first part's choice is kept only if it still pays.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path
from typing import Any

from bigtrain.core.callback import Callback
from bigtrain.core.state import TrainState

# Measured for the small GPTs on this 2-core CPU (docs/benchmarks.md, torch.compile row):
# compiled steady-state steps are 1.24x faster than eager; the first compiled step costs ~25 s
# cold (~3 s when inductor's on-disk cache already holds the same shapes). The cold figure is
# used: a wrong "compile" costs 25 s, a wrong "eager" only the ~20% saving.
COMPILE_SPEEDUP = 1.24
COMPILE_COST_S = 25.0
WARMUP_STEPS = 3  # the first steps pay allocator and kernel warm-up: not timed
TIMED_STEPS = 5
INDUCTOR_CACHE = Path("~/.cache/bigtrain/inductor").expanduser()


def compile_pays(remaining_steps: int, step_seconds: float) -> bool:
    """True when compiling saves more of the remaining wall time than it costs."""
    saving = remaining_steps * step_seconds * (1.0 - 1.0 / COMPILE_SPEEDUP)
    return saving > COMPILE_COST_S


class AutoCompile(Callback):
    """Times a few eager steps, then compiles the model if the rest of the run repays it."""

    def __init__(self) -> None:
        self.decided: bool | None = None  # None: not yet; this run's decision
        self.compiled_before = False  # the checkpointed run compiled (for the resume rule)
        self.step_seconds: float | None = None
        self._times: list[float] = []
        self._last: float | None = None
        self._first_step: int | None = None

    def on_fit_start(self, state: TrainState) -> None:
        self._first_step = state.step
        if self.compiled_before and self.step_seconds is not None:
            # a resumed run: keep compiling only if what is left still repays it
            self._decide(state, state.max_steps - state.step)

    def on_after_step(self, state: TrainState) -> None:
        if self.decided is not None:
            return
        now = time.perf_counter()
        if self._last is not None and state.step - (self._first_step or 0) > WARMUP_STEPS:
            self._times.append(now - self._last)
        self._last = now
        if len(self._times) >= TIMED_STEPS:
            # every process decides on the main one's timing: replicas must compile alike
            median = statistics.median(self._times)
            self.step_seconds = state.trainer.strategy.broadcast_object(median)
            self._decide(state, state.max_steps - state.step)

    def _decide(self, state: TrainState, remaining: int) -> None:
        self.decided = compile_pays(remaining, self.step_seconds or 0.0)
        if self.decided:
            os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(INDUCTOR_CACHE))
            state.trainer.strategy.unwrap(state.model).compile()
            self.compiled_before = True

    def state_dict(self) -> dict[str, Any]:
        return {"compiled": bool(self.compiled_before), "step_seconds": self.step_seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.compiled_before = bool(state.get("compiled", False))
        self.step_seconds = state.get("step_seconds")
