"""Tabular and image data, (x, y) batches: data set -> model -> task -> ``assemble``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from bigtrain.build.common import (
    BuildWrapper,
    Components,
    assemble,
    eval_batches,
    make_model,
    make_strategy,
    seed_everything,
)
from bigtrain.config.schema import RunConfig
from bigtrain.core.strategy import Strategy
from bigtrain.core.task import Task
from bigtrain.errors import ConfigError
from bigtrain.tasks import BinaryClassificationTask, ClassificationTask, RegressionTask


def build_task(cfg: RunConfig, kind: str, num_outputs: int) -> Task:
    """The task for the data's kind (or the recipe's explicit choice)."""
    t = cfg.task
    name = kind if t.name == "auto" else t.name
    if name in ("classification", "binary") and kind == "regression":
        raise ConfigError(
            f"task.name '{name}' needs class labels, but data '{cfg.data.name}' has real-valued "
            "targets"
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
        if t.label_smoothing:
            raise ConfigError("task.label_smoothing applies to classification, not regression")
        return RegressionTask("mse" if t.loss == "auto" else t.loss, t.metrics)
    raise ConfigError(f"task.name '{name}' does not fit data '{cfg.data.name}'")


def build_tabular(
    cfg: RunConfig,
    run_dir: Path | None,
    fold: tuple[int, int] | None = None,
    quiet: bool = False,
    extra_wrappers: Sequence[BuildWrapper] = (),
    strategy: Strategy | None = None,
) -> Components:
    """Data set -> model -> task -> optimizer -> Trainer for (x, y) data."""
    from bigtrain.data import load_data, make_loader

    seed_everything(cfg.seed)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    data = load_data(cfg.data, fold=fold, task=cfg.task.name)
    kind = data.kind
    if cfg.task.name == "classification" and kind == "binary":
        kind = "classification"  # two-logit softmax chosen explicitly
    num_outputs = 2 if kind == "classification" and data.kind == "binary" else data.num_outputs
    task = build_task(cfg, kind, num_outputs)
    model = make_model(cfg, data.input_shape, num_outputs)
    train = data.train
    task.check_batch(model, (train.x[:8], train.y[:8]))
    strategy = strategy or make_strategy(cfg)
    loader = make_loader(
        train, cfg.data, seed=cfg.seed, rank=strategy.rank, world_size=strategy.world_size
    )
    val = data.val if data.val is not None and len(data.val) else None
    val_batches = eval_batches(val.x, val.y) if val is not None else None
    built = assemble(
        cfg, model, task, loader, val_batches, run_dir, data, quiet=quiet,
        extra_wrappers=extra_wrappers, strategy=strategy,
    )  # fmt: skip
    if data.test is not None and len(data.test):
        built.test_batches = eval_batches(data.test.x, data.test.y)
    return built
