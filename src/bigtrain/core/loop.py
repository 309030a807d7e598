"""Trainer: the visible training loop. Everything optional is a Callback, a Task or a Strategy."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigtrain.core.callback import Callback, CallbackList
from bigtrain.core.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from bigtrain.core.events import Event
from bigtrain.core.state import BatchSource, TrainState
from bigtrain.core.strategy import SingleDevice, Strategy
from bigtrain.core.task import Task
from bigtrain.errors import CheckpointError, ConfigError, TrainingError


def split_batch(batch: Any, parts: int) -> list[tuple[Any, float]]:
    """Split a batch along dim 0 into ``parts`` micro-batches with their share of the examples.

    Weighting each micro-batch's mean loss by its share makes accumulated gradients equal to the
    gradient of the whole batch's mean loss, even when the last micro-batch is smaller.
    """
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    if isinstance(batch, dict):
        first = next(iter(batch.values()))
    n = first.shape[0]
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        if hi <= lo:
            continue
        if isinstance(batch, dict):
            micro = {k: v[lo:hi] for k, v in batch.items()}
        elif isinstance(batch, (tuple, list)):
            micro = type(batch)(b[lo:hi] for b in batch)
        else:
            micro = batch[lo:hi]
        out.append((micro, (hi - lo) / n))
    return out


def planned_steps(max_steps: int | None, max_epochs: int | None, steps_per_epoch: int) -> int:
    """Optimizer steps a run will take: max_steps, max_epochs * steps_per_epoch, or the smaller."""
    if max_steps is not None and max_epochs is not None:
        return min(max_steps, max_epochs * steps_per_epoch)
    return max_steps if max_steps is not None else max_epochs * steps_per_epoch


class Trainer:
    """Trains ``model`` on ``train_data`` with ``task``'s loss.

    Args:
        schedule: callable step -> lr (absolute); each param group's lr is ``lr * lr_scale``.
        batch_size_schedule: callable step -> batch size, applied to ``train_data`` before a batch.
        eval_every: evaluate every N optimizer steps; None evaluates at the end of each epoch.
        max_steps / max_epochs: stop at whichever comes first (at least one is required).
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        optimizer: torch.optim.Optimizer,
        train_data: BatchSource,
        *,
        val_data: Iterable[Any] | None = None,
        schedule: Callable[[int], float] | None = None,
        batch_size_schedule: Callable[[int], int] | None = None,
        callbacks: Sequence[Callback] = (),
        strategy: Strategy | None = None,
        max_steps: int | None = None,
        max_epochs: int | None = None,
        grad_accum: int = 1,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        eval_every: int | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        if max_steps is None and max_epochs is None:
            raise ConfigError("set trainer.max_steps or trainer.max_epochs")
        if grad_accum < 1:
            raise ConfigError(f"trainer.grad_accum must be >= 1, got {grad_accum}")
        self.strategy = strategy or SingleDevice()
        model = self.strategy.setup(model)
        total = planned_steps(max_steps, max_epochs, max(1, len(train_data)))
        self.step_limit, self.epoch_limit = max_steps, max_epochs
        self.state = TrainState(
            model=model,
            task=task,
            optimizer=optimizer,
            train_data=train_data,
            val_data=val_data,
            schedule=schedule,
            max_steps=total,
            run_dir=Path(run_dir) if run_dir is not None else None,
        )
        self.state.trainer = self
        self.callbacks = CallbackList(list(callbacks))
        self.batch_size_schedule = batch_size_schedule
        self.grad_accum = grad_accum
        self.clip_grad_norm = clip_grad_norm
        self.clip_grad_value = clip_grad_value
        self.eval_every = eval_every
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._metrics: dict[bool, Any] = {}

    # ------------------------------------------------------------------ the loop
    def fit(self, resume_from: str | Path | None = None) -> TrainState:
        """Train until ``max_steps`` or a callback sets ``state.should_stop``."""
        s, fire = self.state, self.callbacks.fire
        fire(Event.SETUP, s)
        if resume_from is not None:
            self.load(resume_from)
        fire(Event.FIT_START, s)
        s.model.train()
        if self.batch_size_schedule is not None:
            s.train_data.batch_size = self.batch_size_schedule(s.step)
        empty_epochs = 0
        while not (self._limit_reached() or s.should_stop):
            ran_batches = False
            for batch in s.train_data:
                if not ran_batches:
                    fire(Event.EPOCH_START, s)
                    ran_batches = True
                s.batch = self.strategy.to_device(batch)
                fire(Event.BATCH_START, s)
                self.train_step(s.batch)
                fire(Event.AFTER_STEP, s)
                if self.eval_every and s.step % self.eval_every == 0:
                    self.run_evaluation()
                if s.should_stop or (self.step_limit and s.step >= self.step_limit):
                    break
                if self.batch_size_schedule is not None:
                    s.train_data.batch_size = self.batch_size_schedule(s.step)
            else:
                s.epoch += 1
                if ran_batches:
                    empty_epochs = 0
                    if not self.eval_every:
                        self.run_evaluation()
                    fire(Event.EPOCH_END, s)
                else:  # one empty epoch is normal after resuming at an epoch's end; two are not
                    empty_epochs += 1
                    if empty_epochs > 1:
                        raise TrainingError("the training data yields no batches")
        if s.val_data is not None and (not s.history or s.history[-1]["step"] != s.step):
            self.run_evaluation()  # the final weights are always evaluated
        if self._limit_reached() and not s.stop_reason:
            s.stop_reason = "completed"
        fire(Event.FIT_END, s)
        return s

    def _limit_reached(self) -> bool:
        s = self.state
        return (self.step_limit is not None and s.step >= self.step_limit) or (
            self.epoch_limit is not None and s.epoch >= self.epoch_limit
        )

    def train_step(self, batch: Any) -> None:
        """One optimizer step: forward/backward over micro-batches, clip, set lr, step."""
        s, strategy = self.state, self.strategy
        if self.grad_accum == 1:
            with strategy.autocast():
                s.output = s.task.forward_backward(s.model, batch, 1.0, strategy.backward)
            s.loss = s.output.loss.detach()
            self.callbacks.fire(Event.AFTER_FORWARD, s)
        else:
            total = None
            for micro, share in split_batch(batch, self.grad_accum):
                with strategy.autocast():
                    s.output = s.task.forward_backward(s.model, micro, share, strategy.backward)
                part = s.output.loss.detach() * share
                total = part if total is None else total + part
                self.callbacks.fire(Event.AFTER_FORWARD, s)
            s.loss = total
        self.callbacks.fire(Event.AFTER_BACKWARD, s)
        if self.clip_grad_norm is not None or self.clip_grad_value is not None:
            if hasattr(strategy, "unscale"):
                strategy.unscale(s.optimizer)
            if self.clip_grad_norm is not None:
                s.grad_norm = torch.nn.utils.clip_grad_norm_(
                    self._params, self.clip_grad_norm, foreach=True
                )
            if self.clip_grad_value is not None:
                torch.nn.utils.clip_grad_value_(self._params, self.clip_grad_value, foreach=True)
        if s.schedule is not None:
            lr = s.schedule(s.step)
            if lr != s.lr:
                for group in s.optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                s.lr = lr
        strategy.optimizer_step(s.optimizer)
        s.optimizer.zero_grad(set_to_none=True)
        s.step += 1

    def run_evaluation(self) -> dict[str, float]:
        """Evaluate on ``val_data`` (if any), fire EVAL_START/EVAL_END, feed the schedule."""
        s = self.state
        if s.val_data is None:
            return {}
        self.callbacks.fire(Event.EVAL_START, s)
        metrics = self.evaluate(s.val_data, split="val", light=True)
        s.metrics = metrics
        s.history.append({"step": s.step, "epoch": s.epoch, **metrics})
        observe = getattr(s.schedule, "observe", None)
        if observe is not None:
            key = f"val/{s.task.monitor}"
            if key in metrics:
                observe(metrics[key])
        self.callbacks.fire(Event.EVAL_END, s)
        return metrics

    @torch.no_grad()
    def evaluate(
        self, data: Iterable[Any], split: str = "val", light: bool = False
    ) -> dict[str, float]:
        """Mean loss and the task's metrics over ``data``; keys look like ``"val/accuracy"``.

        ``light`` uses the task's cheap metric subset (the periodic evaluation during training).
        Non-scalar metric results (e.g. a confusion matrix) are returned as nested lists.
        """
        s = self.state
        model, task = s.model, s.task
        was_training = model.training
        model.eval()
        if light not in self._metrics:  # made once: building metric objects costs ~1 ms
            made = task.metrics(light=light)
            self._metrics[light] = made.to(self.strategy.device) if made is not None else None
        metrics = self._metrics[light]
        if metrics is not None:
            metrics.reset()
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.strategy.device)
        count = 0
        for batch in data:
            batch = self.strategy.to_device(batch)
            with self.strategy.autocast():
                out = task.loss(model, batch)
            loss_sum += out.loss.detach().double() * out.n
            count += out.n
            if metrics is not None and out.preds is not None:
                metrics.update(out.preds.float(), out.targets)
        model.train(was_training)
        if count == 0:
            return {}
        loss = float(self.strategy.reduce_mean(loss_sum / count))
        result: dict[str, Any] = {f"{split}/loss": loss}
        if hasattr(task, "derived_metrics"):
            result.update({f"{split}/{k}": v for k, v in task.derived_metrics(loss).items()})
        if metrics is not None:
            for name, value in metrics.compute().items():
                result[f"{split}/{name}"] = float(value) if value.numel() == 1 else value.tolist()
        return result

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        s = self.state
        return {
            "step": s.step,
            "epoch": s.epoch,
            "lr": s.lr,
            "metrics": _scalars(s.metrics),
            "history": [_scalars(h) for h in s.history],
            "optimizer": s.optimizer.state_dict(),
            "schedule": s.schedule.state_dict() if hasattr(s.schedule, "state_dict") else {},
            "train_data": s.train_data.state_dict(),
            "callbacks": [cb.state_dict() for cb in self.callbacks.callbacks],
            "rng": rng_state(),
        }

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint folder at ``path`` atomically and fire CHECKPOINT."""
        path = save_checkpoint(path, self.state.model, self.state_dict())
        self.state.last_checkpoint = path
        self.callbacks.fire(Event.CHECKPOINT, self.state)
        return path

    def load(self, path: str | Path) -> None:
        """Restore everything saved by ``save`` so training continues bitwise identically."""
        s = self.state
        saved = load_checkpoint(path, s.model)
        try:
            s.optimizer.load_state_dict(saved["optimizer"])
            if hasattr(s.schedule, "load_state_dict"):
                s.schedule.load_state_dict(saved["schedule"])
            s.train_data.load_state_dict(saved["train_data"])
            cb_states = saved["callbacks"]
            if len(cb_states) != len(self.callbacks.callbacks):
                raise CheckpointError(
                    f"checkpoint {path} was made with {len(cb_states)} callbacks, "
                    f"this run has {len(self.callbacks.callbacks)}"
                )
            for cb, cb_state in zip(self.callbacks.callbacks, cb_states):
                cb.load_state_dict(cb_state)
            s.step, s.epoch, s.lr = saved["step"], saved["epoch"], saved["lr"]
            s.metrics, s.history = saved["metrics"], saved["history"]
            set_rng_state(saved["rng"])
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint {path} does not match this run ({e})") from None
        if s.schedule is not None and s.step > 0:
            s.lr = s.schedule(s.step - 1)


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
