"""Checkpointer (latest + best, pruned) and EarlyStopping, both driven by evaluations."""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import _remove_duplicate_names, save_file

from bigtrain.core.callback import Callback
from bigtrain.core.checkpoint import replace_folder
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


def best_weights(run_dir: str | Path, which: str = "best") -> Path | None:
    """The checkpoint folder holding a run's ``best`` (falling back to ``latest``) weights."""
    ckpt = Path(run_dir) / "checkpoints"
    if which == "best" and (ckpt / "best" / "model.safetensors").is_file():
        return ckpt / "best"
    return read_pointer(ckpt / "latest")


def read_pointer(path: Path) -> Path | None:
    """The checkpoint folder a pointer file (``latest``/``best``) names, or None."""
    if not path.is_file():
        return None
    return path.parent / path.read_text().strip()


class Checkpointer(Callback):
    """Full checkpoints for resuming, and the best weights for evaluation.

    ``run_dir/checkpoints/step-N/`` (full state, newest ``keep`` kept; pointer file ``latest``)
    is written every ``every`` steps if set, otherwise after an evaluation when at least
    ``min_interval_s`` seconds passed since the last one, and always at the end of training.
    The weights of the best evaluation by ``monitor`` are kept in memory when they improve and
    written to ``checkpoints/best/`` (weights + ``best.json``) along with each full checkpoint,
    so small models do not pay a disk write per epoch.
    """

    def __init__(
        self,
        run_dir: str | Path,
        monitor: str,
        mode: str,
        every: int | None = None,
        keep: int = 2,
        min_interval_s: float = 30.0,
    ) -> None:
        self.dir = Path(run_dir) / "checkpoints"
        self.monitor, self.mode, self.every, self.keep = monitor, mode, every, keep
        self.min_interval_s = min_interval_s
        self.best: float | None = None
        self.best_step: int | None = None
        self.best_written_step: int | None = None
        self.saved: list[str] = []
        self._best_weights: dict[str, torch.Tensor] | None = None
        self._last_save = time.monotonic()

    def on_fit_start(self, state: TrainState) -> None:
        self._last_save = time.monotonic()

    def save(self, state: TrainState) -> None:
        name = f"step-{state.step:07d}"
        if self.saved and self.saved[-1] == name:
            return
        self.saved.append(name)
        state.trainer.save(self.dir / name)  # our state_dict (best, saved) goes in with it
        write_pointer(self.dir / "latest", name)
        self.write_best()
        self.prune()
        self._last_save = time.monotonic()

    def write_best(self) -> None:
        if self._best_weights is None or self.best_written_step == self.best_step:
            return
        best = self.dir / "best"
        tmp = self.dir / f".best.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        save_file(self._best_weights, str(tmp / "model.safetensors"))
        (tmp / "best.json").write_text(
            json.dumps({"metric": self.monitor, "value": self.best, "step": self.best_step})
        )
        replace_folder(tmp, best)
        self.best_written_step = self.best_step

    def prune(self) -> None:
        for name in self.saved[: -self.keep]:
            shutil.rmtree(self.dir / name, ignore_errors=True)
        self.saved = self.saved[-self.keep :]

    def on_after_step(self, state: TrainState) -> None:
        if self.every and state.step % self.every == 0:
            self.save(state)

    def on_eval_end(self, state: TrainState) -> None:
        value = state.metrics.get(self.monitor)
        if isinstance(value, float) and _better(value, self.best, self.mode):
            self.best, self.best_step = value, state.step
            weights = state.model.state_dict()
            dropped = {n for names in _remove_duplicate_names(weights).values() for n in names}
            self._best_weights = {
                k: v.detach().to("cpu", copy=True).contiguous()
                for k, v in weights.items()
                if k not in dropped
            }
        if not self.every and time.monotonic() - self._last_save >= self.min_interval_s:
            self.save(state)

    def on_fit_end(self, state: TrainState) -> None:
        self.save(state)

    def state_dict(self) -> dict[str, Any]:
        return {
            "best": self.best,
            "best_step": self.best_step,
            "saved": list(self.saved),
            "best_written_step": self.best_written_step,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state.get("best"), state.get("best_step")
        self.best_written_step = state.get("best_written_step")
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
                state.stop_reason = f"early stopping: {self.monitor} did not improve for {self.patience} evaluations"

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad = state.get("best"), int(state.get("bad", 0))
