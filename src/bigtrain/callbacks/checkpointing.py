"""Checkpointer (latest + best, pruned) and EarlyStopping, both driven by evaluations."""

from __future__ import annotations

import json
import math
import re
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from bigtrain._io import atomic_write_text, replace_folder, temp_dir_beside
from bigtrain.core.callback import Callback
from bigtrain.core.checkpoint import file_sha256
from bigtrain.core.state import TrainState
from bigtrain.errors import CheckpointError


def _better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return math.isfinite(value)
    return value < best - min_delta if mode == "min" else value > best + min_delta


_STEP_NAME = re.compile(r"step-\d{7,}")


def write_pointer(path: Path, target: str) -> None:
    """Atomically make the small text file ``path`` name ``target``."""
    atomic_write_text(path, target + "\n")


def best_weights(run_dir: str | Path, which: str = "best") -> Path | None:
    """The checkpoint folder holding a run's ``best`` (falling back to ``latest``) weights."""
    ckpt = Path(run_dir) / "checkpoints"
    if which == "best" and (ckpt / "best" / "model.safetensors").is_file():
        return ckpt / "best"
    return read_pointer(ckpt / "latest")


def read_pointer(path: Path) -> Path | None:
    """The checkpoint folder a pointer file (``latest``) names, or None when there is none.

    A pointer must name a ``step-N`` folder beside it: anything else (a path that leads out of
    the run folder, garbage) is refused with CheckpointError.
    """
    if not path.is_file():
        return None
    try:
        name = path.read_bytes().decode("utf-8").strip()
    except (OSError, UnicodeDecodeError):
        raise CheckpointError(f"{path} is unreadable; it should name a step-N folder") from None
    if not _STEP_NAME.fullmatch(name):
        raise CheckpointError(
            f"{path} names {name[:60]!r}, not a step-N checkpoint folder beside it; refusing it"
        )
    return path.parent / name


def checkpoint_names(folder: Path) -> list[str]:
    """The ``step-N`` checkpoint folders in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if p.is_dir() and _STEP_NAME.fullmatch(p.name)]
    return sorted(names, key=lambda n: int(n[5:]))


class Checkpointer(Callback):
    """Full checkpoints for resuming, and the best weights for evaluation.

    ``run_dir/checkpoints/step-N/`` (full state; pointer file ``latest``) is written at the end of
    a step (after its evaluation, so a resumed run never skips one): every ``every`` steps if
    set, otherwise after an evaluation when at least ``min_interval_s`` seconds passed since the
    last one, and always at the end of training. The newest ``keep`` are kept while training;
    at the end, rate-limited ones are removed, so a finished run's folder does not depend on
    timing. The weights of the best evaluation by ``monitor`` are kept in memory when they
    improve, written to ``checkpoints/best/`` (weights + ``best.json``) after each full
    checkpoint, and carried inside the checkpoint when they are not its own weights, so a crash
    at any moment loses no best weights.
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
        self._best_weights: dict[str, torch.Tensor] | None = None
        self._saved_at: tuple[int, int] | None = None  # (step, evaluations) of the last save
        self._saving_step: int | None = None
        self._last_save = time.monotonic()

    def on_fit_start(self, state: TrainState) -> None:
        self._last_save = time.monotonic()
        if (
            self._best_weights is None
            and self.best_step is not None
            and self.best_step == state.step
        ):
            # resumed: best = current weights
            self._best_weights = state.trainer.strategy.full_weights(state.model)

    def save(self, state: TrainState) -> None:
        """Every process takes part (a sharded checkpoint is written by all); only the main one
        writes the pointer and best weights and prunes."""
        main = state.trainer.strategy.is_main
        key = (state.step, len(state.history))
        if self._saved_at != key:  # a final evaluation after the last save is saved too
            name = f"step-{state.step:07d}"
            self._saving_step = state.step
            state.trainer.save(self.dir / name)  # our state_dict (best) goes in with it
            if main:
                write_pointer(self.dir / "latest", name)
            self._saved_at = key
            self._last_save = time.monotonic()
            if main:
                self.prune(self.keep)
        if main:
            self.write_best()
        state.trainer.strategy.barrier()  # the others read these files only once written

    def write_best(self) -> None:
        if self._best_weights is None or self.best_written_step == self.best_step:
            return
        best = self.dir / "best"
        tmp = temp_dir_beside(best)
        try:
            save_file(self._best_weights, str(tmp / "model.safetensors"))
            meta = {
                "metric": self.monitor,
                "value": self.best,
                "step": self.best_step,
                "sha256": {"model.safetensors": file_sha256(tmp / "model.safetensors")},
            }
            atomic_write_text(tmp / "best.json", json.dumps(meta))
            replace_folder(tmp, best)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.best_written_step = self.best_step

    def prune(self, keep: int, final: str | None = None) -> None:
        names = checkpoint_names(self.dir)
        if final is None:
            kept = set(names[-keep:])
        else:  # the end of a run: the final one plus on-schedule ones, nothing timing-dependent
            on_schedule = [n for n in names if self.every and int(n[5:]) % self.every == 0]
            earlier = [n for n in on_schedule if n != final]
            kept = {final, *(earlier[-(keep - 1) :] if keep > 1 else [])}
        for name in names:
            if name not in kept:
                shutil.rmtree(self.dir / name, ignore_errors=True)

    def on_step_end(self, state: TrainState) -> None:
        if self.every:
            due = state.step % self.every == 0
        else:
            evaluated = bool(state.history) and state.history[-1]["step"] == state.step
            # every process's clock differs: one process's "due" is everyone's
            due = evaluated and state.trainer.strategy.agree(
                time.monotonic() - self._last_save >= self.min_interval_s
            )
        if due:
            self.save(state)

    def on_eval_end(self, state: TrainState) -> None:
        value = state.metrics.get(self.monitor)
        if isinstance(value, float) and _better(value, self.best, self.mode):
            self.best, self.best_step = value, state.step
            self._best_weights = state.trainer.strategy.full_weights(state.model)

    def on_fit_end(self, state: TrainState) -> None:
        self.save(state)
        if state.trainer.strategy.is_main:
            self.prune(self.keep, final=f"step-{state.step:07d}")

    def state_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"best": self.best, "best_step": self.best_step}
        if self._best_weights is not None and self.best_step != self._saving_step:
            out["best_weights"] = self._best_weights  # not the checkpoint's own weights
        return out

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_step = state.get("best"), state.get("best_step")
        self._best_weights = state.get("best_weights")
        self.best_written_step = None  # rewritten at the next save: it may predate a crash


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
