"""Trainer: the visible training loop. Everything optional is a Callback, a Task or a Strategy."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigtrain.core.callback import Callback, CallbackList
from bigtrain.core.checkpoint import rng_state, set_rng_state
from bigtrain.core.events import Event
from bigtrain.core.schedule import Schedule, as_schedule
from bigtrain.core.state import BatchSource, TrainState
from bigtrain.core.steps import finished_reason, planned_steps, split_batch
from bigtrain.core.strategy import SingleDevice, Strategy
from bigtrain.core.task import Task
from bigtrain.errors import CheckpointError, ConfigError, RunFinishedError, TrainingError


class Trainer:
    """Trains ``model`` on ``train_data`` with ``task``'s loss.

    The model must already be placed by ``strategy.setup(model)`` (before the optimizer was
    built: sharding strategies replace parameters); ``build`` does this.

    Args:
        schedule: a Schedule or a callable step -> lr (absolute); each param group's lr is
            ``lr * lr_scale``.
        batch_size_schedule: callable step -> batch size, applied to ``train_data`` before a batch.
        callbacks: a mapping name -> Callback (checkpoints key callback state by name) or a list.
        eval_every: evaluate every N optimizer steps; None evaluates at the end of each epoch.
            The last step is always evaluated.
        max_steps / max_epochs: stop at whichever comes first (at least one is required).
        monitor / monitor_mode: the metric that selects best weights and stops early
            (default ``"val/" + task.monitor``).
    """

    def __init__(
        self,
        model: nn.Module,
        task: Task,
        optimizer: torch.optim.Optimizer,
        train_data: BatchSource,
        *,
        val_data: Iterable[Any] | None = None,
        schedule: Schedule | Callable[[int], float] | None = None,
        batch_size_schedule: Callable[[int], int] | None = None,
        callbacks: Mapping[str, Callback] | Sequence[Callback] = (),
        strategy: Strategy | None = None,
        max_steps: int | None = None,
        max_epochs: int | None = None,
        grad_accum: int = 1,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        eval_every: int | None = None,
        monitor: str | None = None,
        monitor_mode: str | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        if max_steps is None and max_epochs is None:
            raise ConfigError("set trainer.max_steps or trainer.max_epochs")
        if grad_accum < 1:
            raise ConfigError(f"trainer.grad_accum must be >= 1, got {grad_accum}")
        self.strategy = strategy or SingleDevice()
        first = next(model.parameters(), None)
        if first is not None and first.device.type != self.strategy.device.type:
            raise ConfigError(
                f"the model is on {first.device} but the strategy trains on "
                f"{self.strategy.device}: call strategy.setup(model) before building the optimizer"
            )
        total = planned_steps(max_steps, max_epochs, train_data, batch_size_schedule)
        self.step_limit, self.epoch_limit = max_steps, max_epochs
        self.state = TrainState(
            model=model,
            task=task,
            optimizer=optimizer,
            train_data=train_data,
            val_data=val_data,
            schedule=as_schedule(schedule),
            max_steps=total,
            monitor=monitor or f"val/{task.monitor}",
            monitor_mode=monitor_mode or task.monitor_mode,
            run_dir=Path(run_dir) if run_dir is not None else None,
        )
        self.state.trainer = self
        self.callbacks = CallbackList(callbacks)
        self.batch_size_schedule = batch_size_schedule
        self.grad_accum = grad_accum
        self.clip_grad_norm = clip_grad_norm
        self.clip_grad_value = clip_grad_value
        self.eval_every = eval_every
        self._params = [p for p in model.parameters() if p.requires_grad]
        self._metrics: dict[bool, Any] = {}

    # ------------------------------------------------------------------ the loop
    def fit(self, resume_from: str | Path | None = None) -> TrainState:
        """Train until a limit is reached or a callback sets ``state.should_stop``."""
        s, fire = self.state, self.callbacks.fire
        fire(Event.SETUP, s)
        if resume_from is not None:
            self.load(resume_from)
        fire(Event.FIT_START, s)
        s.model.train()
        self._apply_batch_size()
        empty_passes = 0
        while not (self._limit_reached() or s.should_stop):
            ran_batches = False
            for batch in s.train_data:
                ran_batches = True
                if s.batch_in_epoch == 0:
                    fire(Event.EPOCH_START, s)
                s.batch = self.strategy.to_device(batch)
                fire(Event.BATCH_START, s)
                self.train_step(s.batch)
                s.batch_in_epoch += 1
                fire(Event.AFTER_STEP, s)
                self._agree_stop()
                self._apply_batch_size()
                self.end_step()
                if s.should_stop or self._limit_reached():
                    break
            # a pass without batches is normal once, after resuming at an epoch's end
            empty_passes = 0 if ran_batches else empty_passes + 1
            if empty_passes > 1:
                raise TrainingError("the training data yields no batches")
        if s.val_data is not None and (not s.history or s.history[-1]["step"] != s.step):
            self.run_evaluation()  # stopped between evaluations: the final weights are evaluated
        if self._limit_reached() and not s.stop_reason:
            s.stop_reason = "completed"
        fire(Event.FIT_END, s)
        return s

    def end_step(self) -> None:
        """Close the epoch if its data is used up, evaluate if due, then fire STEP_END.

        Everything a step triggers happens before STEP_END, so a checkpoint taken there
        resumes into exactly the run that would have continued.
        """
        s, fire = self.state, self.callbacks.fire
        epoch_done = s.train_data.at_epoch_end()
        if epoch_done:
            s.epoch += 1
            s.batch_in_epoch = 0
        due = s.step % self.eval_every == 0 if self.eval_every else epoch_done
        if due or s.should_stop or self._limit_reached():
            self.run_evaluation()
        if epoch_done:
            fire(Event.EPOCH_END, s)
        fire(Event.STEP_END, s)

    def _agree_stop(self) -> None:
        """A stop asked for on any process stops every process at the same step (no process is
        left waiting in a collective)."""
        s = self.state
        if self.strategy.agree(s.should_stop) and not s.should_stop:
            s.should_stop, s.stop_reason = True, s.stop_reason or "stopped by another process"

    def _apply_batch_size(self) -> None:
        if self.batch_size_schedule is not None:
            self.state.train_data.batch_size = self.batch_size_schedule(self.state.step)

    def _limit_reached(self) -> bool:
        s = self.state
        return (self.step_limit is not None and s.step >= self.step_limit) or (
            self.epoch_limit is not None and s.epoch >= self.epoch_limit
        )

    def train_step(self, batch: Any) -> None:
        """One optimizer step: forward/backward over micro-batches, clip, set lr, step."""
        s, strategy, fire = self.state, self.strategy, self.callbacks.fire
        micro_batches = (
            split_batch(batch, self.grad_accum) if self.grad_accum > 1 else [(batch, 1.0)]
        )
        total = None
        for i, (micro, share) in enumerate(micro_batches):
            with strategy.gradient_sync(last=i == len(micro_batches) - 1), strategy.autocast():
                s.output = s.task.forward_backward(s.model, micro, share, strategy.backward)
            part = s.output.loss.detach()
            part = part * share if share != 1.0 else part
            total = part if total is None else total + part
            fire(Event.MICRO_BATCH_END, s)
            s.output.logits = None  # the live logits would keep the graph's output alive
        s.loss = total
        strategy.unscale_gradients(s.optimizer)
        fire(Event.AFTER_BACKWARD, s)
        if self.clip_grad_norm is not None:
            s.grad_norm = strategy.clip_grad_norm(self._params, self.clip_grad_norm)
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
        if s.schedule is not None and s.monitor in metrics:
            s.schedule.observe(metrics[s.monitor])
        self.callbacks.fire(Event.EVAL_END, s)
        return metrics

    @torch.no_grad()
    def evaluate(
        self, data: Iterable[Any], split: str = "val", light: bool = False
    ) -> dict[str, float]:
        """Mean loss, the task's metrics and the mean of each scalar extra over ``data``.

        Keys look like ``"val/accuracy"``. ``light`` uses the task's cheap metric subset (the
        periodic evaluation during training). Each process evaluates its ``strategy.shard`` of
        ``data``; sums and counts are reduced across processes before dividing, and the metric
        objects reduce their own state. Non-scalar metric results (a confusion matrix) become
        nested lists.
        """
        s = self.state
        model, task = self.strategy.unwrap(s.model), s.task
        was_training = model.training
        model.eval()
        if light not in self._metrics:  # made once: building metric objects costs ~1 ms
            made = task.metrics(light=light)
            self._metrics[light] = made.to(self.strategy.device) if made is not None else None
        metrics = self._metrics[light]
        if metrics is not None:
            metrics.reset()
        device = self.strategy.device
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        extra_sums: dict[str, torch.Tensor] = {}
        count = 0
        for batch, counted in self.strategy.shard(data):
            batch = self.strategy.to_device(batch)
            with self.strategy.autocast():
                out = task.loss(model, batch)
            if not counted:
                continue  # a padding batch: its forward only keeps the processes in step
            loss_sum += out.loss.detach().double() * out.n
            for k, v in out.extras.items():
                v = torch.as_tensor(v, device=device).detach().double()
                if v.numel() == 1:
                    extra_sums[k] = extra_sums.get(k, 0.0) + v.reshape(()) * out.n
            count += out.n
            if metrics is not None:
                task.update_metrics(metrics, out)
        model.train(was_training)
        totals = self.strategy.reduce_sum(
            torch.stack([loss_sum, torch.tensor(float(count), dtype=torch.float64, device=device),
                         *extra_sums.values()])
        ).tolist()  # fmt: skip
        if totals[1] == 0:
            return {}
        loss = totals[0] / totals[1]
        result: dict[str, Any] = {f"{split}/loss": loss}
        result.update({f"{split}/{k}": v for k, v in task.derived_metrics(loss).items()})
        result.update({f"{split}/{k}": v / totals[1] for k, v in zip(extra_sums, totals[2:])})
        if metrics is not None:
            for name, value in metrics.compute().items():
                result[f"{split}/{name}"] = float(value) if value.numel() == 1 else value.tolist()
        return result

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """Everything but the model and optimizer (the strategy saves those, maybe sharded)."""
        s = self.state
        return {
            "step": s.step,
            "epoch": s.epoch,
            "batch_in_epoch": s.batch_in_epoch,
            "lr": s.lr,
            "stop_reason": s.stop_reason,
            "metrics": _scalars(s.metrics),
            "history": [_scalars(h) for h in s.history],
            "schedule": s.schedule.state_dict() if s.schedule is not None else {},
            "strategy": self.strategy.state_dict(),
            "train_data": s.train_data.state_dict(),
            "callbacks": self.callbacks.state_dict(),
            "rng": rng_state(),
        }

    def save(self, path: str | Path) -> Path:
        """Write a checkpoint folder at ``path`` atomically and fire CHECKPOINT."""
        s = self.state
        path = self.strategy.save_checkpoint(path, s.model, s.optimizer, self.state_dict())
        self.state.last_checkpoint = path
        self.callbacks.fire(Event.CHECKPOINT, self.state)
        return path

    def load(self, path: str | Path) -> None:
        """Restore everything saved by ``save`` so training continues bitwise identically.

        Raises CheckpointError when the checkpoint is of a different run, or when its run is
        finished (early-stopped, or at this run's step/epoch limit).
        """
        s = self.state
        try:
            saved = self.strategy.load_checkpoint(path, s.model, s.optimizer)
            if s.schedule is not None:
                s.schedule.load_state_dict(saved["schedule"])
            self.strategy.load_state_dict(saved.get("strategy", {}))
            s.train_data.load_state_dict(saved["train_data"])
            cb_states = saved["callbacks"]
            if not isinstance(cb_states, dict):
                raise CheckpointError(
                    f"checkpoint {path} was written by an older bigtrain (callback state by "
                    "position); start a new run"
                )
            self.callbacks.load_state_dict(cb_states)
            s.step, s.epoch, s.lr = saved["step"], saved["epoch"], saved["lr"]
            s.batch_in_epoch = int(saved.get("batch_in_epoch", 0))
            s.stop_reason = saved.get("stop_reason", "")
            s.metrics, s.history = saved["metrics"], saved["history"]
            set_rng_state(saved["rng"])
        except (KeyError, ValueError, TypeError) as e:
            raise CheckpointError(f"checkpoint {path} does not match this run ({e})") from None
        reason = finished_reason(saved, self.step_limit, self.epoch_limit)
        if reason is not None:
            raise RunFinishedError(f"the run in {path}: {reason}")
        s.stop_reason = ""
        if s.schedule is not None and s.step > 0:
            s.lr = s.schedule(s.step - 1)


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(v)}
