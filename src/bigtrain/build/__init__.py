"""The ONE place that turns a validated RunConfig into objects, through the registries.

Feature packages never import each other; this package wires data -> model -> task ->
optimizer -> schedule -> callbacks -> Trainer. One builder per kind of data is registered in
``BUILDERS``; ``build`` only dispatches. Everything builders share is in ``common``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from bigtrain._registry import Registry
from bigtrain.build.common import (
    BuildWrapper,
    Components,
    assemble,
    default_wrappers,
    eval_batches,
    make_model,
    make_strategy,
    monitor_mode_for,
    resolve_device,
    resolve_precision,
    seed_everything,
    strategy_name,
)
from bigtrain.build.recommender import build_recommender
from bigtrain.build.tabular import build_tabular, build_task
from bigtrain.build.text import (
    LANGUAGE_MODELS,
    build_language_model,
    build_text_classifier,
    model_block_size,
    prepared_folder,
)
from bigtrain.config.schema import RunConfig
from bigtrain.core.strategy import Strategy
from bigtrain.data.ratings_config import RatingsDataConfig
from bigtrain.data.text_config import TEXT_CLASSIFICATION_NAMES, TextDataConfig
from bigtrain.errors import ConfigError

Builder = Callable[..., Components]

#: data kind -> builder(cfg, run_dir, quiet=...) -> Components
BUILDERS: Registry[Builder] = Registry("data kind")
BUILDERS.add("tabular", build_tabular)
BUILDERS.add("language_model", build_language_model)
BUILDERS.add("text_classification", build_text_classifier)
BUILDERS.add("ratings", build_recommender)


def data_kind(cfg: RunConfig) -> str:
    """Which builder a recipe's data needs: ``tabular`` (tables and images), ``language_model``,
    ``text_classification`` or ``ratings`` (recommenders)."""
    if isinstance(cfg.data, RatingsDataConfig):
        return "ratings"
    if isinstance(cfg.data, TextDataConfig):
        classifies = cfg.data.name in TEXT_CLASSIFICATION_NAMES
        return "text_classification" if classifies else "language_model"
    return "tabular"


def build(
    cfg: RunConfig,
    run_dir: Path | None = None,
    fold: tuple[int, int] | None = None,
    quiet: bool = False,
    extra_wrappers: Sequence[BuildWrapper] = (),
    strategy: Strategy | None = None,
) -> Components:
    """Build every component a recipe describes, with the builder of its data kind.

    ``extra_wrappers`` add features at ``assemble``'s seams after the recipe's own.
    ``strategy`` defaults to ``make_strategy(cfg)``.
    """
    kind = data_kind(cfg)
    if fold is not None:
        if kind != "tabular":
            raise ConfigError(
                "cross-validation applies to tabular and image data, not text or ratings"
            )
        return build_tabular(
            cfg, run_dir, fold=fold, quiet=quiet, extra_wrappers=extra_wrappers, strategy=strategy
        )
    return BUILDERS.get(kind)(
        cfg, run_dir, quiet=quiet, extra_wrappers=extra_wrappers, strategy=strategy
    )


__all__ = [
    "BUILDERS",
    "LANGUAGE_MODELS",
    "BuildWrapper",
    "Components",
    "assemble",
    "build",
    "build_language_model",
    "build_recommender",
    "build_tabular",
    "build_task",
    "build_text_classifier",
    "data_kind",
    "default_wrappers",
    "eval_batches",
    "make_model",
    "make_strategy",
    "model_block_size",
    "monitor_mode_for",
    "prepared_folder",
    "resolve_device",
    "resolve_precision",
    "seed_everything",
    "strategy_name",
]
