"""The ONE place that turns a validated RunConfig into objects, through the registries.

Feature packages never import each other; this module wires data -> model -> task -> optimizer ->
schedule -> callbacks -> Trainer.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bigtrain.callbacks import Checkpointer, EarlyStopping, HealthCheck, MetricsLogger, ProgressBar
from bigtrain.config.schema import RunConfig
from bigtrain.core.loop import Trainer, planned_steps
from bigtrain.core.strategy import SingleDevice
from bigtrain.core.task import Task
from bigtrain.errors import ConfigError
from bigtrain.models import build_model
from bigtrain.optim import (
    PenalizedTask,
    build_batch_size_schedule,
    build_optimizer,
    build_schedule,
    penalty_params,
)
from bigtrain.tasks import BinaryClassificationTask, ClassificationTask, RegressionTask

# torch.compile costs ~25 s cold (~3 s with inductor's on-disk cache) and saves ~20% of a small
# GPT's step time (docs/benchmarks.md): "auto" compiles runs of at least this many steps
COMPILE_AUTO_MIN_STEPS = 5000
INDUCTOR_CACHE = Path("~/.cache/bigtrain/inductor").expanduser()


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy and Python's RNGs (model init and dropout use the global torch RNG)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def resolve_precision(name: str, device: str) -> str:
    """``auto`` is bf16 autocast where the hardware computes bf16 natively, fp32 elsewhere.

    On a CPU without AVX512-BF16/AMX, bf16 matmuls are emulated and slower than fp32.
    """
    if name != "auto":
        return name
    if device == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return "bf16" if native else "fp32"


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device is 'cuda' but no CUDA GPU is available")
    return name


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> list[tuple]:
    """Fixed evaluation batches (views into x, y: no copies)."""
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


def build_task(cfg: RunConfig, kind: str, num_outputs: int) -> Task:
    """The task for the data's kind (or the recipe's explicit choice)."""
    t = cfg.task
    name = kind if t.name == "auto" else t.name
    if name in ("classification", "binary") and kind == "regression":
        raise ConfigError(
            f"task.name '{name}' needs class labels, but data '{cfg.data.name}' has real-valued targets"
        )
    if name == "classification":
        if t.loss not in ("auto", "cross_entropy"):
            raise ConfigError(
                f"task.loss '{t.loss}' does not apply to classification (use cross_entropy)"
            )
        return ClassificationTask(max(num_outputs, 2), t.label_smoothing, t.metrics)
    if name == "binary":
        if t.loss not in ("auto", "bce"):
            raise ConfigError(
                f"task.loss '{t.loss}' does not apply to binary classification (use bce)"
            )
        return BinaryClassificationTask(t.label_smoothing, t.metrics)
    if name == "regression":
        return RegressionTask("mse" if t.loss == "auto" else t.loss, t.metrics)
    raise ConfigError(f"task.name '{name}' does not fit data '{cfg.data.name}'")


@dataclass
class Components:
    """Everything built from a recipe; ``trainer`` runs it."""

    config: RunConfig
    model: nn.Module
    task: Task
    trainer: Trainer
    data: Any
    callbacks: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


def build_supervised(
    cfg: RunConfig, run_dir: Path | None, fold: tuple[int, int] | None = None, quiet: bool = False
) -> Components:
    """Data set -> model -> task -> optimizer -> Trainer for (x, y) data."""
    from bigtrain.data import load_data, make_loader

    seed_everything(cfg.seed)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    data = load_data(cfg.data, fold=fold)
    kind = data.kind
    if cfg.task.name == "classification" and kind == "binary":
        kind = "classification"  # two-logit softmax chosen explicitly
    num_outputs = 2 if kind == "classification" and data.kind == "binary" else data.num_outputs
    task = build_task(cfg, kind, num_outputs)
    model_params = {k: v for k, v in cfg.model.items() if k != "name"}
    model = build_model(cfg.model["name"], model_params, data.input_shape, num_outputs)
    train = data.train
    task.check_batch(model, (train.x[:8], train.y[:8]))
    loader = make_loader(train, cfg.data, seed=cfg.seed)
    val = data.val if data.val is not None and len(data.val) else None
    val_batches = eval_batches(val.x, val.y) if val is not None else None
    built = _assemble(cfg, model, task, loader, val_batches, run_dir, data, quiet=quiet)
    if data.test is not None and len(data.test):
        built.extras["test_batches"] = eval_batches(data.test.x, data.test.y)
    return built


def _assemble(
    cfg: RunConfig,
    model: nn.Module,
    task: Task,
    loader: Any,
    val_batches: Any,
    run_dir: Path | None,
    data: Any,
    quiet: bool = False,
    logger_kwargs: dict[str, Any] | None = None,
    first_callbacks: list[Any] | None = None,
) -> Components:
    """Optimizer, schedules, callbacks and the Trainer: shared by every kind of run."""
    tr = cfg.trainer
    device = resolve_device(tr.device)
    strategy = SingleDevice(device, resolve_precision(tr.precision, device))
    model = strategy.setup(model)
    if tr.monitor and tr.monitor.startswith("val/"):
        # the recipe's monitored metric becomes the task's: every periodic evaluation computes
        # it and reduce-on-plateau observes it (set before a wrapper copies it)
        task.monitor = tr.monitor.split("/", 1)[1]
    if cfg.regularization.l1 or cfg.regularization.l2:
        params = penalty_params(model, cfg.regularization.apply_to)
        task = PenalizedTask(task, params, cfg.regularization.l1, cfg.regularization.l2)
    optimizer = build_optimizer(model, cfg.optim)
    total = total_steps(cfg, max(1, len(loader)))
    sched_cfg = cfg.schedule
    if sched_cfg.warmup_steps and sched_cfg.warmup_steps >= total:
        # a run shortened by an override (trainer.max_steps=40) keeps working: warm up for half
        _stderr_printer(quiet)(
            f"warning: schedule.warmup_steps {sched_cfg.warmup_steps} >= {total} total steps; "
            f"warming up for {total // 2} steps instead"
        )
        sched_cfg = sched_cfg.model_copy(update={"warmup_steps": total // 2})
    schedule = build_schedule(sched_cfg, cfg.optim.lr, total)
    batch_sched = (
        build_batch_size_schedule(cfg.batch_size_schedule) if cfg.batch_size_schedule else None
    )
    monitor = tr.monitor or (f"val/{task.monitor}" if val_batches is not None else "val/loss")
    mode = tr.monitor_mode or monitor_mode_for(monitor)
    callbacks: dict[str, Any] = {f"extra{i}": cb for i, cb in enumerate(first_callbacks or [])}
    callbacks |= {
        "health": HealthCheck(
            tr.health.check_every,
            tr.health.vanishing_below,
            tr.health.exploding_above,
            report=_stderr_printer(quiet),
        ),
    }
    if run_dir is not None:
        callbacks["logger"] = MetricsLogger(
            run_dir, tr.log_every, tr.tensorboard, **(logger_kwargs or {})
        )
    if tr.progress and not quiet:
        callbacks["progress"] = ProgressBar(monitor=monitor)
    if tr.early_stopping_patience:
        callbacks["early_stopping"] = EarlyStopping(monitor, mode, tr.early_stopping_patience)
    if run_dir is not None:
        callbacks["checkpointer"] = Checkpointer(
            run_dir,
            monitor,
            mode,
            tr.checkpoint_every,
            tr.keep_checkpoints,
            tr.checkpoint_interval_s,
        )
    if tr.compile is True or (tr.compile == "auto" and total >= COMPILE_AUTO_MIN_STEPS):
        # in place: parameter names (and so checkpoints) stay those of the plain model. Compiled
        # kernels go to a persistent cache (not /tmp), so the next run of the same shapes
        # compiles in ~2 s instead of ~21 s (measured for shakespeare-char)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(INDUCTOR_CACHE))
        model.compile()
    trainer = Trainer(
        model,
        task,
        optimizer,
        loader,
        val_data=val_batches,
        schedule=schedule,
        batch_size_schedule=batch_sched,
        callbacks=list(callbacks.values()),
        strategy=strategy,
        max_steps=tr.max_steps,
        max_epochs=tr.max_epochs,
        grad_accum=tr.grad_accum,
        clip_grad_norm=tr.clip_grad_norm,
        clip_grad_value=tr.clip_grad_value,
        eval_every=tr.eval_every,
        run_dir=run_dir,
    )
    trainer.state.extra["monitor"] = (monitor, mode)
    return Components(cfg, model, task, trainer, data, callbacks)


_HIGHER_IS_BETTER = {"accuracy", "f1", "precision", "recall", "auroc", "r2"}


def monitor_mode_for(metric: str) -> str:
    """``max`` for scores (accuracy, F1, AUROC, R²...), ``min`` for losses and errors."""
    return "max" if metric.rsplit("/", 1)[-1] in _HIGHER_IS_BETTER else "min"


def total_steps(cfg: RunConfig, steps_per_epoch: int) -> int:
    """Optimizer steps the recipe's run will take (the same rule the Trainer applies)."""
    return planned_steps(cfg.trainer.max_steps, cfg.trainer.max_epochs, steps_per_epoch)


def _stderr_printer(quiet: bool):
    import sys

    def report(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr)

    return report


def build(
    cfg: RunConfig,
    run_dir: Path | None = None,
    fold: tuple[int, int] | None = None,
    quiet: bool = False,
) -> Components:
    """Build every component a recipe describes (dispatching on the kind of data/task)."""
    from bigtrain.data.text_config import TEXT_DATA_NAMES

    if cfg.data.name in TEXT_DATA_NAMES:
        if fold is not None:
            raise ConfigError("cross-validation applies to tabular and image data, not text")
        from bigtrain.lm import build_language_model

        return build_language_model(cfg, run_dir, quiet=quiet)
    return build_supervised(cfg, run_dir, fold=fold, quiet=quiet)
