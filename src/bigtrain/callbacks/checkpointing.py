"""Checkpointer (latest + best, pruned) and EarlyStopping, both driven by evaluations."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any

from bigtrain.core.callback import Callback
from bigtrain.core.state import TrainState


def _better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return math.isfinite(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


def write_pointer(path: Path, target: str) -> None:
    """Atomically make the small text file ``path`` name ``target``."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(target + "\n")
    os.replace(tmp, path)


def read_pointer(path: Path) -> Path | None:
    """The checkpoint folder a pointer file (``latest``/``best``) names, or None."""
    if not path.is_file():
        return None
    return path.parent / path.read_text().strip()


class Checkpointer(Callback):
    """Saves ``run_dir/checkpoints/step-N`` after each evaluation (or every ``every`` steps) and
    at the end; keeps the newest ``keep`` plus the best by ``monitor``; pointer files
    ``checkpoints/latest`` and ``checkpoints/best`` name them (each replaced atomically)."""

    def __init__(
        self, run_dir: str | Path, monitor: str, mode: str, every: int | None = None, keep: int = 2
    ) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.monitor, self.mode, self.every, self.keep = monitor, mode, every, keep
        self.best: float | None = None
        self.best_step: int | None = None
        self.saved: list[str] = []

    def save(self, state: TrainState) -> None:
        name = f"step-{state.step:07d}"
        if self.saved and self.saved[-1] == name:
            return
        value = state.metrics.get(self.monitor)
        improved = isinstance(value, float) and _better(value, self.best, self.mode)
        if improved:
            self.best, self.best_step = value, state.step
        if name not in self.saved:
            self.saved.append(name)
        state.trainer.save(self.dir / name)  # our state_dict (best, saved) goes in with it
        write_pointer(self.dir / "latest", name)
        if improved:
            write_pointer(self.dir / "best", name)
        self.prune()

    def prune(self) -> None:
        best = f"step-{self.best_step:07d}" if self.best_step is not None else None
        keep = set(self.saved[-self.keep :]) | ({best} if best else set())
        for name in list(self.saved):
            if name not in keep:
                shutil.rmtree(self.dir / name, ignore_errors=True)
                self.saved.remove(name)

    def on_after_step(self, state: TrainState) -> None:
        if self.every and state.step % self.every == 0:
            self.save(state)

    def on_eval_end(self, state: TrainState) -> None:
        if not self.every:
            self.save(state)

    def on_fit_end(self, state: TrainState) -> None:
        self.save(state)

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "best_step": self.best_step, "saved": list(self.saved)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state.get("best"), state.get("best_step")
        self.saved = [n for n in state.get("saved", []) if (self.dir / n).is_dir()]


class EarlyStopping(Callback):
    """Stops when ``monitor`` has not improved by ``min_delta`` for ``patience`` evaluations."""

    def __init__(self, monitor: str, mode: str, patience: int, min_delta: float = 0.0) -> None:
        self.monitor, self.mode, self.patience, self.min_delta = monitor, mode, patience, min_delta
        self.best: float | None = None
        self.bad = 0

    def on_eval_end(self, state: TrainState) -> None:
        value = state.metrics.get(self.monitor)
        if not isinstance(value, float):
            return
        if _better(value, self.best, self.mode, self.min_delta):
            self.best, self.bad = value, 0
        else:
            self.bad += 1
            if self.bad >= self.patience:
                state.should_stop = True
                state.stop_reason = (
                    f"early stopping: {self.monitor} did not improve for {self.patience} evaluations"
                )

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad = state.get("best"), int(state.get("bad", 0))
