"""The ``lora:`` section wired into a run: adapters added at the model seam (docs/transfer.md).

``wrap_model`` (optionally) loads a base run's weights, then adds LoRA adapters in place, so the
optimizer only ever sees the adapters. Training, resume, eval and generate all build the model
the same way (base weights, then adapters), so checkpoints always hold peft's parameter names
and load strictly; ``bigtrain compress merge`` folds the adapters in for a plain run folder.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from torch import nn

from bigtrain.build.common import BuildWrapper, strategy_name
from bigtrain.config.schema import RunConfig
from bigtrain.errors import CheckpointError, ConfigError
from bigtrain.transfer.lora import add_lora


def _base_run_config(base: Path) -> dict:
    cfg_file = base / "config.yaml"
    if not cfg_file.is_file():
        raise ConfigError(f"lora.base_run: {base} is not a bigtrain run folder (no config.yaml)")
    try:
        raw = yaml.safe_load(cfg_file.read_text()) or {}
    except yaml.YAMLError:
        raise CheckpointError(f"{cfg_file} is corrupt") from None
    return raw


def check_tokenizer(cfg: RunConfig, base: Path) -> None:
    """Refuse a base run whose tokenizer differs from this run's (ids would mean other text)."""
    from bigtrain.data.text_config import TextDataConfig

    theirs = base / "tokenizer.json"
    if not isinstance(cfg.data, TextDataConfig) or not theirs.is_file():
        return
    from bigtrain.build.text import prepared_folder

    ours = prepared_folder(cfg, quiet=True) / "tokenizer.json"
    if ours.is_file() and ours.read_bytes() != theirs.read_bytes():
        raise ConfigError(
            f"lora.base_run: {base} was trained with another tokenizer than this recipe's data "
            "gives (its token ids would mean other text); use the same data.tokenizer, or "
            "data.tokenizer: smollm2 whose vocabulary is fixed"
        )


def load_base_run(model: nn.Module, cfg: RunConfig, base_run: str) -> nn.Module:
    """``model`` with ``base_run``'s best weights (a merged or compressed variant works too)."""
    from bigtrain.build.variant import restore_variant
    from bigtrain.callbacks.checkpointing import best_weights
    from bigtrain.core.checkpoint import load_weights

    base = Path(base_run)
    raw = _base_run_config(base)
    if raw.get("lora") is not None:
        raise ConfigError(
            f"lora.base_run: {base} is itself a LoRA run; merge it first: "
            f"bigtrain compress merge {base} --out {base}-merged"
        )
    theirs = (raw.get("model") or {}).get("name")
    if theirs != cfg.model.name:
        raise ConfigError(
            f"lora.base_run: {base} trained a '{theirs}' model but this recipe builds "
            f"'{cfg.model.name}'; copy its model section"
        )
    check_tokenizer(cfg, base)
    path = best_weights(base)
    if path is None:
        raise CheckpointError(f"lora.base_run: {base} has no checkpoint")
    model = restore_variant(model, base)
    load_weights(path, model)
    return model


class Lora(BuildWrapper):
    """``lora:``: base weights (``base_run``), then adapters; everything else frozen."""

    def __init__(self, cfg: RunConfig, total_steps: int) -> None:
        if cfg.lora is None:
            raise ConfigError("the Lora wrapper needs a lora: section")
        if strategy_name(cfg) != "single":
            # adapters are added after the strategy placed the model: DDP/FSDP would have
            # registered (or sharded) the parameters before the adapters existed
            raise ConfigError(
                "lora: runs on one device for now (distributed.strategy single); "
                "the adapters are a fraction of the parameters, so one device is usually enough"
            )
        self.lora = cfg.lora

    def wrap_model(self, model: nn.Module, cfg: RunConfig) -> nn.Module:
        lo = self.lora
        if lo.base_run is not None:
            model = load_base_run(model, cfg, lo.base_run)
        return recipe_adapters(model, cfg)


def recipe_adapters(model: nn.Module, cfg: RunConfig) -> nn.Module:
    """``model`` with the adapters of the recipe's ``lora:`` section (no base weights loaded):
    the shape a LoRA run's checkpoint loads into, e.g. for ``bigtrain generate``."""
    lo = cfg.lora
    if lo is None:
        return model
    return add_lora(model, lo.r, lo.alpha, lo.dropout, lo.target_modules)
