"""A recipe seen by the planner: the model on the meta device, its data's shape, an example batch.

``describe_run`` builds nothing that costs memory: the model is made on the meta device, the
data is described (``bigtrain.data.describe``), and ``example_batch`` makes meta tensors of the
batch's shape. ``calibrate`` is the exception: it builds the real run and times a few steps.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bigtrain.build.common import (
    on_meta_device,
    resolve_device,
    resolve_precision,
    strategy_name,
)
from bigtrain.build.tabular import build_task
from bigtrain.build.text import (
    LANGUAGE_MODELS,
    language_model_task,
    model_block_size,
    prepared_folder,
)
from bigtrain.config.schema import RunConfig
from bigtrain.core.callback import Callback, CallbackList
from bigtrain.core.state import TrainState
from bigtrain.core.task import Task
from bigtrain.data.config import DataConfig
from bigtrain.data.describe import DataShape, describe_table
from bigtrain.data.ratings_config import RatingsDataConfig
from bigtrain.errors import ConfigError
from bigtrain.models import build_model


@dataclass
class DescribedRun:
    """What a plan needs to know about a recipe, with its model on the meta device."""

    config: RunConfig
    model: nn.Module  # meta device; activation checkpointing off (the planner models it)
    task: Task
    data: DataShape
    batch_size: int  # the global batch of one optimizer step
    grad_accum: int
    steps: int  # optimizer steps the run will take
    tokens_per_example: int  # block size for language models, 1 otherwise
    activation_checkpointing: bool  # what the recipe asks for
    precision: str  # resolved for the recipe's device
    strategy: str  # single, ddp or fsdp as the recipe resolves here
    token_inputs: bool = False  # inputs are token ids (language models, text classifiers)
    evaluations: int = 0  # periodic evaluations, the last one included
    eval_examples: int = 0  # examples one evaluation runs forward

    @property
    def is_language_model(self) -> bool:
        return self.data.kind == "language_model"

    def example_batch(self, n: int) -> Any:
        """A batch of ``n`` examples as meta tensors (inputs, targets)."""
        meta = torch.device("meta")
        if self.is_language_model:
            shape = (n, self.tokens_per_example)
            return (
                torch.zeros(shape, dtype=torch.long, device=meta),
                torch.zeros(shape, dtype=torch.long, device=meta),
            )
        dtype = torch.long if self.token_inputs else torch.float32
        x = torch.zeros((n, *self.data.input_shape), dtype=dtype, device=meta)
        if self.data.kind == "classification":
            y = torch.zeros(n, dtype=torch.long, device=meta)
        elif self.data.kind == "binary":
            y = torch.zeros(n, device=meta)
        else:
            y = torch.zeros((n, self.data.num_outputs) if self.data.num_outputs > 1 else n)
            y = y.to(meta)
        return x, y

    def loss(self, model: nn.Module, batch: Any) -> torch.Tensor:
        return self.task.loss(model, batch).loss

    def blocks(self) -> list[nn.Module] | None:
        blocks = getattr(self.model, "blocks", None)
        return list(blocks) if isinstance(blocks, (nn.ModuleList, list)) and blocks else None


def _steps(cfg: RunConfig, steps_per_epoch: int) -> int:
    tr = cfg.trainer
    by_epochs = None if tr.max_epochs is None else tr.max_epochs * max(1, steps_per_epoch)
    if tr.max_steps is None:
        return int(by_epochs or 0)
    return tr.max_steps if by_epochs is None else min(tr.max_steps, by_epochs)


def _evaluations(cfg: RunConfig, steps: int, steps_per_epoch: int) -> int:
    every = cfg.trainer.eval_every or max(1, steps_per_epoch)
    return -(-steps // every)


def _meta_model(cfg: RunConfig, input_shape: tuple[int, ...], outputs: int) -> nn.Module:
    params = cfg.model.config
    if dataclasses.is_dataclass(params) and hasattr(params, "activation_checkpointing"):
        params = dataclasses.replace(params, activation_checkpointing=False)
    with on_meta_device():
        return build_model(cfg.model.name, params, input_shape, outputs)


def describe_run(cfg: RunConfig) -> DescribedRun:
    """The recipe's model (on the meta device), task, data shape and run length."""
    device = resolve_device(cfg.trainer.device)
    common = dict(
        config=cfg,
        grad_accum=cfg.trainer.grad_accum,
        activation_checkpointing=bool(cfg.model.fields().get("activation_checkpointing")),
        precision=resolve_precision(cfg.trainer.precision, device),
        strategy=strategy_name(cfg),
    )
    if isinstance(cfg.data, DataConfig):
        shape = describe_table(cfg.data, cfg.task.name)
        kind = shape.kind
        task = build_task(cfg, kind, shape.num_outputs)
        model = _meta_model(cfg, shape.input_shape, shape.num_outputs)
        batch = shape.train_examples if cfg.data.batch_size == "full" else cfg.data.batch_size
        if cfg.data.drop_last:
            per_epoch = max(1, shape.train_examples // batch)
        else:
            per_epoch = -(-shape.train_examples // batch)
        steps = _steps(cfg, per_epoch)
        return DescribedRun(
            model=model, task=task, data=shape, batch_size=int(batch), steps=steps,
            tokens_per_example=1, evaluations=_evaluations(cfg, steps, per_epoch),
            eval_examples=shape.val_examples, **common,
        )  # fmt: skip
    if isinstance(cfg.data, RatingsDataConfig):
        raise ConfigError(
            "planning does not take ratings data yet (recommenders); train with "
            "`bigtrain train` and see docs/recommenders.md for table sizes"
        )
    from bigtrain.data.text_config import TEXT_CLASSIFICATION_NAMES

    if cfg.data.name == "shakespeare_genre" and cfg.model.name in ("encoder", "rnn_classifier"):
        return _describe_genre(cfg, common)
    if cfg.data.name in TEXT_CLASSIFICATION_NAMES:
        raise ConfigError(
            f"planning does not take '{cfg.data.name}' with model '{cfg.model.name}' yet (only "
            "shakespeare_genre with encoder or rnn_classifier); train it and read the run's "
            "summary for sizes"
        )
    if cfg.model.name not in LANGUAGE_MODELS:
        raise ConfigError(
            f"model '{cfg.model.name}' is not a language model; use {LANGUAGE_MODELS}"
        )
    from bigtrain.data.tokens import PreparedText

    prepared = PreparedText.load(prepared_folder(cfg, quiet=True))
    block = model_block_size(cfg)
    shape = DataShape(
        input_shape=(block,),
        num_outputs=prepared.vocab_size,
        kind="language_model",
        train_examples=prepared.n_train // block,
        val_examples=prepared.n_val // block,
        vocab_size=prepared.vocab_size,
        train_tokens=prepared.n_train,
    )
    # TokenWindowSampler's default epoch: about one pass over the training tokens
    per_epoch = max(1, prepared.n_train // (cfg.data.batch_size * block))
    steps = _steps(cfg, per_epoch)
    d = cfg.data
    return DescribedRun(
        model=_meta_model(cfg, (block,), prepared.vocab_size), task=language_model_task(cfg),
        data=shape, batch_size=d.batch_size, steps=steps, tokens_per_example=block,
        evaluations=_evaluations(cfg, steps, per_epoch),
        # each evaluation measures val loss and nanoGPT's train-loss estimate on fixed batches
        eval_examples=2 * d.eval_batches * (d.eval_batch_size or d.batch_size), **common,
    )  # fmt: skip


def _describe_genre(cfg: RunConfig, common: dict[str, Any]) -> DescribedRun:
    """Genre classification: the passages and tokenizer are made as training makes them (the
    vocabulary is the tokenizer's), which reads the corpus (seconds)."""
    from bigtrain.data.text import train_tokenizer
    from bigtrain.data.text_classification import genre_passages

    d = cfg.data
    block = model_block_size(cfg)
    kw = dict(lines_per_passage=d.lines_per_passage, seed=cfg.seed, max_per_class=d.max_per_class)
    texts, _, classes = genre_passages(split="train", **kw)
    pad = train_tokenizer(d.tokenizer, texts, d.vocab_size).vocab_size
    if "vocab_size" not in cfg.model.fields():
        raise ConfigError(
            f"model '{cfg.model.name}' cannot read tokens (use encoder or rnn_classifier)"
        )
    vocab = {"vocab_size": pad + 1} | ({"pad_id": pad} if cfg.model.name == "encoder" else {})
    spec = cfg.model.replace(**vocab)
    n_val = max(1, int(len(texts) * d.val_fraction))
    shape = DataShape((block,), len(classes), "classification", len(texts) - n_val, n_val,
                      read_from_data=True)  # fmt: skip
    with on_meta_device():
        model = build_model(spec.name, spec.config, (block,), len(classes))
    per_epoch = -(-shape.train_examples // d.batch_size)
    steps = _steps(cfg, per_epoch)
    from bigtrain.tasks import ClassificationTask

    return DescribedRun(
        model=model, task=ClassificationTask(len(classes)), data=shape, batch_size=d.batch_size,
        steps=steps, tokens_per_example=1, token_inputs=True,
        evaluations=_evaluations(cfg, steps, per_epoch), eval_examples=n_val, **common,
    )  # fmt: skip


@dataclass(frozen=True)
class Calibration:
    """Measured on this machine: seconds per optimizer step and per evaluation."""

    step_seconds: float
    eval_seconds: float
    steps_timed: int


class _StepClock(Callback):
    """Times steps of the real loop and stops it once enough were timed."""

    def __init__(self, warmup: int, min_steps: int, seconds: float) -> None:
        self.warmup, self.min_steps, self.seconds = warmup, min_steps, seconds
        self.times: list[float] = []

    def on_fit_start(self, state: TrainState) -> None:
        self.times.append(time.perf_counter())

    def on_step_end(self, state: TrainState) -> None:
        self.times.append(time.perf_counter())
        timed = len(self.times) - 1 - self.warmup
        if timed >= self.min_steps and self.times[-1] - self.times[self.warmup] >= self.seconds:
            state.should_stop = True


def calibrate(
    cfg: RunConfig, seconds: float = 2.0, warmup: int = 5, min_steps: int = 10
) -> Calibration:
    """Time the real run on this machine: its own loop, data and callbacks, on a throwaway
    build (no run folder), for ``warmup`` steps and then at least ``min_steps`` steps and
    ``seconds``; then one evaluation, warm. The step time is the median step."""
    from bigtrain.build import build

    built = build(cfg, run_dir=None, quiet=True)
    trainer = built.trainer
    state = trainer.state
    clock = _StepClock(warmup, min_steps, seconds)
    trainer.callbacks = CallbackList({**trainer.callbacks.named, "clock": clock})
    trainer.step_limit, trainer.epoch_limit = 10**9, None  # the clock decides when to stop
    val, state.val_data = state.val_data, None  # evaluations are timed on their own
    trainer.fit()
    steps = [b - a for a, b in zip(clock.times[warmup:], clock.times[warmup + 1 :])]
    eval_seconds = 0.0
    if val is not None:
        state.val_data = val
        for _ in range(2):  # the first evaluation builds its metric objects
            start = time.perf_counter()
            trainer.run_evaluation()
            eval_seconds = time.perf_counter() - start
    return Calibration(statistics.median(steps), eval_seconds, len(steps))


def measure_training_peak(cfg: RunConfig, steps: int = 3) -> int:
    """Measured peak tensor bytes of training: the weights and buffers resident before the
    first step plus the peak of what ``steps`` real steps allocate (``peak_tensor_memory``),
    on a throwaway build. The ground truth the planned ``memory.total`` is checked against."""
    from bigtrain.build import build
    from bigtrain.core.events import Event
    from bigtrain.plan.measure import peak_tensor_memory

    trainer = build(cfg, run_dir=None, quiet=True).trainer
    trainer.callbacks.fire(Event.SETUP, trainer.state)
    batches = iter(trainer.state.train_data)

    def run_steps() -> None:
        for _ in range(steps):
            trainer.train_step(trainer.strategy.to_device(next(batches)))

    model = trainer.state.model
    resident = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return peak_tensor_memory(run_steps, trainer.strategy.device) + resident
