"""MetricsLogger: metrics.jsonl (one JSON object per line) and TensorBoard event files."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from bigtrain._io import atomic_write_text
from bigtrain.core.callback import Callback
from bigtrain.core.state import TrainState


def _kept_records(path: Path, step: int) -> list[str]:
    """Lines of a metrics log a resumed run keeps: records up to the checkpoint's step, without
    the earlier end's test records; an unreadable line (cut by a crash) is dropped."""
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if (
            isinstance(record, dict)
            and record.get("step", 0) <= step
            and record.get("kind") != "test"
        ):
            kept.append(line)
    return kept


def _clean(record: dict[str, Any]) -> dict[str, Any]:
    return {
        k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()
    }


class MetricsLogger(Callback):
    """Logs the mean train loss, lr and throughput every ``log_every`` steps, and every evaluation.

    Records: ``{"kind": "train"|"val"|"test"|"grad_norms"|"health", "step", "epoch", "time", ...}``.
    ``count_tokens`` makes throughput tokens/s (numel of the input) instead of examples/s.
    """

    def __init__(
        self,
        run_dir: str | Path,
        log_every: int = 10,
        tensorboard: bool = True,
        count_tokens: bool = False,
        flops_per_unit: float | None = None,
        peak_flops: float | None = None,
    ) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.tb_dir = Path(run_dir) / "tensorboard"
        self.log_every = log_every
        self.use_tensorboard = tensorboard
        self.count_tokens = count_tokens
        self.flops_per_unit = flops_per_unit
        self.peak_flops = peak_flops
        self.elapsed_before = 0.0  # seconds trained before a resume
        self._file = None
        self._tb = None
        self._loss_sum = None
        self._n_losses = 0
        self._units = 0
        self._t_last = 0.0

    # -- plumbing
    def now(self) -> float:
        return self.elapsed_before + time.perf_counter() - self._t0

    def write(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps(_clean(record)) + "\n")
        if self._tb is not None:
            kind, step = record["kind"], record["step"]
            for k, v in record.items():
                if k not in ("kind", "step", "epoch", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(f"{kind}/{k}", v, step)

    def on_fit_start(self, state: TrainState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists():  # resumed: the log reads as one run
            atomic_write_text(
                self.path, "".join(line + "\n" for line in _kept_records(self.path, state.step))
            )
        self._file = open(self.path, "a", buffering=1 << 16)
        if self.use_tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # events after the checkpoint's step are dropped; its own step was logged before it
            self._tb = SummaryWriter(
                str(self.tb_dir), purge_step=state.step + 1 if state.step else None
            )
        self._t0 = time.perf_counter()
        self._t_last = self._t0

    # -- hooks
    def on_after_step(self, state: TrainState) -> None:
        loss = state.loss
        self._loss_sum = loss if self._loss_sum is None else self._loss_sum + loss
        self._n_losses += 1
        x = state.batch[0] if isinstance(state.batch, (tuple, list)) else state.batch
        self._units += x.numel() if self.count_tokens else x.shape[0]
        if state.step % self.log_every == 0:
            self.flush_train(state)

    def flush_train(self, state: TrainState) -> None:
        if not self._n_losses:
            return
        now = time.perf_counter()
        rate = self._units / max(now - self._t_last, 1e-9)
        record = {
            "kind": "train",
            "step": state.step,
            "epoch": state.epoch,
            "time": round(self.now(), 4),
            "loss": float(self._loss_sum) / self._n_losses,
            "lr": state.lr or state.optimizer.param_groups[0]["lr"],
            ("tokens_per_s" if self.count_tokens else "examples_per_s"): round(rate, 2),
        }
        if self.flops_per_unit and self.peak_flops:
            record["mfu"] = round(rate * self.flops_per_unit / self.peak_flops, 4)
            state.mfu = record["mfu"]
        if state.grad_norm is not None:
            record["grad_norm"] = float(state.grad_norm)
        if state.noise_scale is not None:  # written by DynamicBatch
            record["noise_scale"] = state.noise_scale
        if state.batch_size is not None:
            record["batch_size"] = state.batch_size
        for k, v in (state.output.extras if state.output else {}).items():
            record[k] = float(v)
        state.throughput = rate
        state.train_loss = record["loss"]
        self.write(record)
        self._loss_sum, self._n_losses, self._units, self._t_last = None, 0, 0, now

    def on_after_backward(self, state: TrainState) -> None:
        norms, state.grad_norms = state.grad_norms, None
        if norms is not None:
            self.write(
                {
                    "kind": "grad_norms",
                    "step": state.step,
                    "epoch": state.epoch,
                    "time": round(self.now(), 4),
                    "norms": norms,
                }
            )
        messages, state.health_messages = state.health_messages, []
        for message in messages:
            self.write(
                {
                    "kind": "health",
                    "step": state.step,
                    "epoch": state.epoch,
                    "time": round(self.now(), 4),
                    "message": message,
                }
            )

    def on_eval_end(self, state: TrainState) -> None:
        self.log_metrics(state, state.metrics)

    def log_metrics(self, state: TrainState, metrics: dict[str, Any]) -> None:
        """Write one record per split prefix found in ``metrics`` ("val/loss" -> kind "val")."""
        by_split: dict[str, dict[str, Any]] = {}
        for key, value in metrics.items():
            split, _, name = key.partition("/")
            if isinstance(value, (int, float)):
                by_split.setdefault(split, {})[name] = value
        for split, values in by_split.items():
            self.write(
                {
                    "kind": split,
                    "step": state.step,
                    "epoch": state.epoch,
                    "time": round(self.now(), 4),
                    **values,
                }
            )
        self._file.flush()

    def on_fit_end(self, state: TrainState) -> None:
        self.flush_train(state)
        state.wall_time_s = self.now()
        self.close()

    def close(self) -> None:
        if self._file is not None:
            self.elapsed_before, self._t0 = self.now(), time.perf_counter()  # kept for state_dict
            self._file.flush()
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def state_dict(self) -> dict[str, Any]:
        """Taken when a checkpoint is written: everything logged so far is flushed to disk
        first, so a crash after the checkpoint loses no record the resumed run will not redo."""
        if self._file is not None:
            self._file.flush()
            os.fsync(self._file.fileno())
        if self._tb is not None:
            self._tb.flush()
        window = {"loss_sum": self._loss_sum, "n_losses": self._n_losses, "units": self._units}
        elapsed = self.now() if self._file is not None else self.elapsed_before
        # the open logging window goes in too: the record after a resume averages the same steps
        return {"elapsed": elapsed, **(window if self._n_losses else {})}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.elapsed_before = float(state.get("elapsed", 0.0))
        if state.get("n_losses"):
            self._loss_sum = state["loss_sum"]
            self._n_losses, self._units = int(state["n_losses"]), int(state["units"])
