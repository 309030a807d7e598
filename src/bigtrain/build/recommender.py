"""Recommenders on user-item ratings: ratings -> model (tables sized from the data) -> rating
or ranking task -> ``assemble``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from bigtrain.build.common import (
    BuildWrapper,
    Components,
    assemble,
    make_model,
    make_strategy,
    seed_everything,
)
from bigtrain.config.schema import RunConfig
from bigtrain.core.strategy import Strategy
from bigtrain.core.task import Task
from bigtrain.errors import ConfigError

#: models that score (user, item) pairs from embedding tables
RECOMMENDER_MODELS = ("mf", "two_tower")
_SPARSE_OPTIMIZERS = ("sparse_adam", "adagrad", "sgd")


def recommender_task(cfg: RunConfig, data) -> Task:
    """``rating`` (MSE on explicit ratings, the default) or ``ranking`` (sampled negatives)."""
    from bigtrain.tasks import RankingTask, RatingTask, RecommenderPriors

    t, d = cfg.task, cfg.data
    name = "rating" if t.name == "auto" else t.name
    b = data.baselines
    priors = RecommenderPriors(
        b.global_mean, b.user_bias, b.item_bias, data.popularity, data.warm_items
    )
    penalized = cfg.model.config.embedding_l2 > 0
    if t.label_smoothing:
        raise ConfigError("task.label_smoothing applies to classification, not recommenders")
    if name == "rating":
        if t.loss not in ("auto", "mse"):
            raise ConfigError(
                f"task.loss '{t.loss}' does not apply to rating prediction (use mse, or "
                "task.name=ranking for bpr/sampled_softmax)"
            )
        return RatingTask(priors, d.top_k, penalized, t.metrics)
    if name == "ranking":
        loss = "bpr" if t.loss == "auto" else t.loss
        return RankingTask(priors, d.top_k, penalized, t.metrics, loss, d.negatives)
    raise ConfigError(
        f"task.name '{name}' does not fit ratings data '{d.name}'; use rating or ranking"
    )


def _check_optimizer(cfg: RunConfig, model: torch.nn.Module) -> None:
    sparse = bool(getattr(cfg.model.config, "sparse", False))
    name = cfg.optim.name
    if sparse and name not in _SPARSE_OPTIMIZERS:
        raise ConfigError(
            f"model.sparse makes sparse gradients, which optim.name '{name}' cannot apply; use "
            f"{', '.join(_SPARSE_OPTIMIZERS)}"
        )
    if not sparse and name == "sparse_adam":
        raise ConfigError("optim.name sparse_adam needs model.sparse=true (sparse gradients)")
    if name == "sparse_adam":
        dense = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
        if dense:
            raise ConfigError(
                f"optim.name sparse_adam updates only embedding tables, but model "
                f"'{cfg.model.name}' has dense layers ({dense[0]}); use adagrad or sgd"
            )
    if sparse and (cfg.trainer.clip_grad_norm or cfg.trainer.clip_grad_value):
        raise ConfigError(
            "model.sparse gradients cannot be clipped by the loop; unset trainer.clip_grad_norm "
            "and trainer.clip_grad_value (or use dense tables)"
        )
    if sparse and cfg.distributed.strategy in ("ddp", "fsdp"):
        raise ConfigError(
            "model.sparse with ddp/fsdp is not supported (their gradient reduction is dense); "
            "use dense tables"
        )


def build_recommender(
    cfg: RunConfig,
    run_dir: Path | None,
    quiet: bool = False,
    extra_wrappers: Sequence[BuildWrapper] = (),
    strategy: Strategy | None = None,
) -> Components:
    """Ratings -> embedding-table model -> task -> optimizer -> Trainer."""
    from bigtrain.data import InMemoryLoader
    from bigtrain.data.ratings import load_ratings
    from bigtrain.models import TwoTower
    from bigtrain.tasks import RankingTask

    if cfg.model.name not in RECOMMENDER_MODELS:
        raise ConfigError(
            f"model '{cfg.model.name}' does not take user-item ratings; use "
            f"{' or '.join(RECOMMENDER_MODELS)}"
        )
    seed_everything(cfg.seed)
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    data = load_ratings(cfg.data)
    sizes = {"n_users": data.n_users, "n_items": data.n_items}
    if cfg.model.name == "two_tower":
        sizes |= {"n_genres": len(data.genre_names), "n_year_buckets": data.n_year_buckets}
    spec = cfg.model.replace(**sizes)
    task = recommender_task(cfg, data)
    model = make_model(cfg, data.input_shape, 1, spec=spec)
    _check_optimizer(cfg, model)
    train = data.train
    if isinstance(task, RankingTask):  # the positives are what a ranking loss learns from
        keep = train.y >= cfg.data.relevant_rating
        train = type(train)(train.x[keep], train.y[keep])
        if model.user_bias is not None:
            # a user's bias adds to all of its items alike: ranking losses compare items of one
            # user, so its gradient is exactly zero. Frozen, it is not trained nor reported
            model.user_bias.weight.requires_grad_(False)
    else:
        model.global_mean.fill_(data.baselines.global_mean)
    if isinstance(model, TwoTower):
        model.set_item_features(data.item_genres, data.item_year_bucket)
    warm_users = torch.zeros(data.n_users + 1, dtype=torch.bool)
    warm_users[train.x[:, 0]] = True
    warm_items = torch.zeros(data.n_items + 1, dtype=torch.bool)
    warm_items[train.x[:, 1]] = True
    model.zero_rows(torch.nonzero(~warm_users).flatten(), torch.nonzero(~warm_items).flatten())
    task.check_batch(model, (train.x[:8], train.y[:8]))
    strategy = strategy or make_strategy(cfg)
    d = cfg.data
    loader = InMemoryLoader(
        train.x, train.y, d.batch_size, d.shuffle, cfg.seed, d.drop_last,
        strategy.rank, strategy.world_size,
    )  # fmt: skip
    built = assemble(
        cfg, model, task, loader, data.val, run_dir, data, quiet=quiet,
        extra_wrappers=extra_wrappers, strategy=strategy,
    )  # fmt: skip
    built.test_batches = data.test
    # the rows training touched (for a ranking run, its positives): predict's cold_start flags
    built.extras.update(warm_users=warm_users, warm_items=warm_items)
    return built
