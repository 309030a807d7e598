"""What every kind of run shares: the strategy, optimizer, schedules, callbacks and the Trainer.

``assemble`` is the one place these are made, with named seams where features wrap what it
builds (``BuildWrapper``: model, task, optimizer, loader, extra callbacks). The builders per
data kind (tabular.py, text.py) make the data, model and task, then call ``assemble``.
"""

from __future__ import annotations

import contextlib
import os
import random
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bigtrain._io import meminfo
from bigtrain.callbacks import (
    Checkpointer,
    DynamicBatch,
    EarlyStopping,
    HealthCheck,
    MetricsLogger,
    ProgressBar,
)
from bigtrain.callbacks.noise_scale import check_setup
from bigtrain.config.schema import ModelSpec, RunConfig
from bigtrain.core.callback import Callback
from bigtrain.core.hardware import native_bf16
from bigtrain.core.loop import Trainer, planned_steps
from bigtrain.core.state import BatchSource
from bigtrain.core.strategy import SingleDevice, Strategy
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

INDUCTOR_CACHE = Path("~/.cache/bigtrain/inductor").expanduser()


def seed_everything(seed: int) -> None:
    """Seed torch, NumPy and Python's RNGs (model init and dropout use the global torch RNG)."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def resolve_precision(name: str, device: str) -> str:
    """``auto`` is bf16 autocast where the hardware computes bf16 natively, fp32 elsewhere.

    On a CPU without AVX512-BF16/AMX (read from the CPU's flags), bf16 matmuls are emulated and
    slower than fp32.
    """
    if name != "auto":
        return name
    return "bf16" if native_bf16(device) else "fp32"


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device is 'cuda' but no CUDA GPU is available")
    return name


def strategy_name(cfg: RunConfig) -> str:
    """``distributed.strategy`` resolved: ``auto`` is ddp under torchrun with several
    processes, single otherwise."""
    from bigtrain.distributed import process_info

    name, world = cfg.distributed.strategy, process_info().world_size
    if name == "auto":
        return "ddp" if world > 1 else "single"
    if name == "single" and world > 1:
        raise ConfigError(
            f"distributed.strategy is 'single' but torchrun started {world} processes; "
            "use ddp or fsdp (or auto)"
        )
    return name


def make_strategy(cfg: RunConfig) -> Strategy:
    """The run's Strategy: one device, or DDP/FSDP over torchrun's processes (a group of one
    without torchrun). Joins the process group, so builders make it before their loaders."""
    device = resolve_device(cfg.trainer.device)
    precision = resolve_precision(cfg.trainer.precision, device)
    name = strategy_name(cfg)
    if name == "single":
        return SingleDevice(device, precision)
    from bigtrain.distributed import strategy_class

    d = cfg.distributed
    if name == "ddp":
        options = {"find_unused_parameters": d.find_unused_parameters}
    else:
        options = {"reshard_after_forward": d.reshard_after_forward, "cpu_offload": d.cpu_offload}
    return strategy_class(name)(device, precision, d.timeout_s, **options)


def eval_batches(x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> list[tuple]:
    """Fixed evaluation batches (views into x, y: no copies)."""
    return [(x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, len(x), batch_size)]


@contextlib.contextmanager
def on_meta_device() -> Iterator[None]:
    """Build modules on the meta device (shapes only, no memory), skipping ``nn.init``.

    Meta tensors hold no values, and torch's meta ``normal_`` costs ~0.1 s a tensor (8 s for a
    GPT-2): the initialisers are replaced by the identity meanwhile. The global RNG is left
    as it was, so the real build that follows draws the same weights.
    """
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    try:
        for n in names:
            setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
        with torch.random.fork_rng(devices=[]), torch.device("meta"):
            yield
    finally:
        for n, fn in saved.items():
            setattr(nn.init, n, fn)


def make_model(
    cfg: RunConfig,
    input_shape: tuple[int, ...],
    num_outputs: int,
    spec: ModelSpec | None = None,
) -> nn.Module:
    """Build the recipe's model (or ``spec``) after checking that its weights fit in memory.

    The model is first built on the meta device (no memory), so a typo such as
    ``model.hidden=[100000000]`` is a clear error naming the size instead of an out-of-memory
    crash.
    """
    spec = spec or cfg.model
    name, params = spec.name, spec.config
    with on_meta_device():  # the seeded init stays put
        shape_only = build_model(name, params, input_shape, num_outputs)
    n = sum(p.numel() for p in shape_only.parameters())
    # weights + gradients + two Adam moments, in fp32: a floor on what training needs
    needed, available = 16 * n, meminfo("MemAvailable")
    if available is not None and needed > available:
        raise ConfigError(
            f"model '{name}' would have {n:,} parameters ({4 * n / 2**30:.1f} GiB of weights, "
            f"~{needed / 2**30:.1f} GiB to train) but only {available / 2**30:.1f} GiB of memory "
            "is available; make it smaller"
        )
    return build_model(name, params, input_shape, num_outputs)


class BuildWrapper:
    """A feature that wraps what ``assemble`` builds. Every seam is the identity by default.

    The seams run in this order: ``wrap_model`` (after the strategy placed the model),
    ``wrap_task``, ``wrap_optimizer``, ``wrap_loader``, ``callbacks``. Opacus-style features
    that replace model, optimizer and loader together implement all three.
    """

    def wrap_model(self, model: nn.Module, cfg: RunConfig) -> nn.Module:
        return model

    def wrap_task(self, task: Task, model: nn.Module, cfg: RunConfig) -> Task:
        return task

    def wrap_optimizer(
        self, optimizer: torch.optim.Optimizer, model: nn.Module, cfg: RunConfig
    ) -> torch.optim.Optimizer:
        return optimizer

    def wrap_loader(self, loader: BatchSource, cfg: RunConfig) -> BatchSource:
        return loader

    def callbacks(self, cfg: RunConfig) -> dict[str, Callback]:
        return {}


class Penalty(BuildWrapper):
    """``regularization.l1/l2``: the task's loss gains the penalty (PenalizedTask)."""

    def wrap_task(self, task: Task, model: nn.Module, cfg: RunConfig) -> Task:
        reg = cfg.regularization
        return PenalizedTask(task, penalty_params(model, reg.apply_to), reg.l1, reg.l2)


class Compile(BuildWrapper):
    """``trainer.compile``: compile the model in place, so parameter names (and checkpoints)
    stay those of the plain model."""

    def wrap_model(self, model: nn.Module, cfg: RunConfig) -> nn.Module:
        # Inductor reads its cache location only from this variable (torch sets it process-wide
        # itself; it has no config field): a user's own value wins. The persistent cache makes
        # the next run of the same shapes compile in ~2 s instead of ~21 s (shakespeare-char)
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(INDUCTOR_CACHE))
        model.compile()
        return model


class AutoCompileWhenItPays(BuildWrapper):
    """``trainer.compile: auto``: start eager, time a few steps, compile when the rest of the
    run repays compiling (callbacks/auto_compile.py)."""

    def callbacks(self, cfg: RunConfig) -> dict[str, Callback]:
        from bigtrain.callbacks.auto_compile import AutoCompile

        return {"auto_compile": AutoCompile()}


def default_wrappers(cfg: RunConfig, total_steps: int) -> list[BuildWrapper]:
    """The wrappers a recipe asks for, in the order they apply."""
    wrappers: list[BuildWrapper] = []
    # the model's own changes first (pretrained weights, freezing, adapters, masks, fake
    # quantization), then the task's (teacher, penalties), then compile and DP-SGD
    if cfg.finetune is not None:
        from bigtrain.build.transfer import Transfer

        wrappers.append(Transfer(cfg, total_steps))
    if cfg.lora is not None:
        from bigtrain.build.lora import Lora

        wrappers.append(Lora(cfg, total_steps))
    if cfg.prune is not None:
        from bigtrain.build.prune import Prune

        wrappers.append(Prune(cfg, total_steps))
    if cfg.quantize is not None:
        from bigtrain.build.quantize import QuantizationAware

        wrappers.append(QuantizationAware(cfg, total_steps))
    if cfg.distill is not None:
        from bigtrain.build.distill import Distill

        wrappers.append(Distill(cfg, total_steps))
    if cfg.regularization.l1 or cfg.regularization.l2:
        wrappers.append(Penalty())
    tr = cfg.trainer
    if tr.compile is True:
        wrappers.append(Compile())
    elif tr.compile == "auto" and cfg.privacy is None:  # Opacus' hooks: eager
        wrappers.append(AutoCompileWhenItPays())
    if cfg.privacy is not None:
        from bigtrain.build.privacy import Privacy

        wrappers.append(Privacy(cfg, total_steps))
    return wrappers


@dataclass
class Components:
    """Everything built from a recipe; ``trainer`` runs it."""

    config: RunConfig
    model: nn.Module
    task: Task
    trainer: Trainer
    data: Any
    callbacks: dict[str, Any] = field(default_factory=dict)
    test_batches: list[Any] | None = None  # held-out split evaluated after training
    tokenizer: Any = None  # text runs
    extras: dict[str, Any] = field(default_factory=dict)  # kind-specific values (block size...)


_HIGHER_IS_BETTER = {"accuracy", "f1", "precision", "recall", "auroc", "r2", "ndcg", "hit_rate"}


def monitor_mode_for(metric: str) -> str:
    """``max`` for scores (accuracy, F1, AUROC, R², NDCG@K...), ``min`` for losses and errors."""
    name = metric.rsplit("/", 1)[-1].split("@", 1)[0]
    return "max" if name in _HIGHER_IS_BETTER else "min"


def stderr_printer(quiet: bool) -> Callable[[str], None]:
    def report(message: str) -> None:
        if not quiet:
            print(message, file=sys.stderr)

    return report


def check_dynamic_batch(
    cfg: RunConfig, loader: BatchSource, strategy: Strategy, batch_schedule: bool
) -> None:
    """Refuse a ``dynamic_batch:`` section the run cannot honour, at build time (the callback
    checks the same at SETUP, for runs made without a recipe)."""
    if strategy_name(cfg) == "fsdp":
        raise ConfigError(
            "dynamic_batch does not support distributed.strategy fsdp: FSDP keeps the first "
            "micro-batch's gradient private until the step's end; use ddp"
        )
    check_setup(
        cfg.dynamic_batch,
        batch_size=loader.batch_size,
        grad_accum=cfg.trainer.grad_accum,
        world_size=strategy.world_size,
        max_epochs=cfg.trainer.max_epochs,
        batch_size_schedule=batch_schedule,
        loss_scaling=strategy.loss_scaling,
    )


def assemble(
    cfg: RunConfig,
    model: nn.Module,
    task: Task,
    loader: BatchSource,
    val_batches: Any,
    run_dir: Path | None,
    data: Any,
    *,
    quiet: bool = False,
    logger_kwargs: dict[str, Any] | None = None,
    first_callbacks: dict[str, Callback] | None = None,
    extra_wrappers: Sequence[BuildWrapper] = (),
    counts_tokens: bool = False,
    strategy: Strategy | None = None,
) -> Components:
    """Strategy, wrappers, optimizer, schedules, callbacks and the Trainer for any kind of run.

    The recipe's own wrappers (``default_wrappers``) apply first, then ``extra_wrappers``.
    """
    tr = cfg.trainer
    batch_sched = (
        build_batch_size_schedule(cfg.batch_size_schedule) if cfg.batch_size_schedule else None
    )
    if batch_sched is not None:
        loader.batch_size = batch_sched(0)
    total = planned_steps(tr.max_steps, tr.max_epochs, loader, batch_sched)
    strategy = strategy or make_strategy(cfg)  # builders make it first: loaders need the rank
    if cfg.dynamic_batch is not None:
        check_dynamic_batch(cfg, loader, strategy, batch_sched is not None)
    model = strategy.setup(model)  # once, before the optimizer sees the parameters
    if tr.monitor and tr.monitor.startswith("val/"):
        # the recipe's monitored metric becomes the task's: every periodic evaluation computes
        # it and reduce-on-plateau observes it
        task.monitor = tr.monitor.split("/", 1)[1]
    wrappers = [*default_wrappers(cfg, total), *extra_wrappers]
    for w in wrappers:
        model = w.wrap_model(model, cfg)
    for w in wrappers:
        task = w.wrap_task(task, model, cfg)
    optimizer = build_optimizer(model, cfg.optim)
    for w in wrappers:
        optimizer = w.wrap_optimizer(optimizer, model, cfg)
    for w in wrappers:
        loader = w.wrap_loader(loader, cfg)
    sched_cfg = cfg.schedule
    if sched_cfg.warmup_steps and sched_cfg.warmup_steps >= total:
        # a run shortened by an override (trainer.max_steps=40) keeps working: warm up for half
        stderr_printer(quiet or not strategy.is_main)(
            f"warning: schedule.warmup_steps {sched_cfg.warmup_steps} >= {total} total steps; "
            f"warming up for {total // 2} steps instead"
        )
        sched_cfg = sched_cfg.model_copy(update={"warmup_steps": total // 2})
    schedule = build_schedule(sched_cfg, cfg.optim.lr, total)
    monitor = tr.monitor or (f"val/{task.monitor}" if val_batches is not None else "val/loss")
    mode = tr.monitor_mode or monitor_mode_for(monitor)
    callbacks: dict[str, Callback] = dict(first_callbacks or {})
    main = strategy.is_main  # only the main process writes files and prints
    callbacks["health"] = HealthCheck(
        tr.health.check_every,
        tr.health.vanishing_below,
        tr.health.exploding_above,
        report=stderr_printer(quiet or not main),
    )
    if run_dir is not None and main:
        callbacks["logger"] = MetricsLogger(
            run_dir,
            tr.log_every,
            tr.tensorboard,
            count_tokens=counts_tokens,
            **(logger_kwargs or {}),
        )
    if tr.progress and not quiet and main:
        callbacks["progress"] = ProgressBar(monitor=monitor)
    if tr.early_stopping_patience:
        callbacks["early_stopping"] = EarlyStopping(monitor, mode, tr.early_stopping_patience)
    if cfg.dynamic_batch is not None:  # on every process: they measure and adapt together
        callbacks["dynamic_batch"] = DynamicBatch(cfg.dynamic_batch)
    for w in wrappers:
        callbacks.update(w.callbacks(cfg))
    if run_dir is not None:  # last: it saves the state the others have updated at STEP_END
        callbacks["checkpointer"] = Checkpointer(
            run_dir,
            monitor,
            mode,
            tr.checkpoint_every,
            tr.keep_checkpoints,
            tr.checkpoint_interval_s,
        )
    trainer = Trainer(
        model,
        task,
        optimizer,
        loader,
        val_data=val_batches,
        schedule=schedule,
        batch_size_schedule=batch_sched,
        callbacks=callbacks,
        strategy=strategy,
        max_steps=tr.max_steps,
        max_epochs=tr.max_epochs,
        grad_accum=tr.grad_accum,
        clip_grad_norm=tr.clip_grad_norm,
        clip_grad_value=tr.clip_grad_value,
        eval_every=tr.eval_every,
        monitor=monitor,
        monitor_mode=mode,
        run_dir=run_dir,
    )
    trainer.state.counts_tokens = counts_tokens
    return Components(cfg, model, task, trainer, data, callbacks)
