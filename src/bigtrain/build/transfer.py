"""The ``finetune:`` section wired into a run: freezing at the model seam, per-group learning
rates at the optimizer seam, a callback for gradual unfreezing (docs/transfer.md).

The optimizer is built once over every parameter that will ever train (those trainable now and
the frozen blocks that ``unfreeze_every`` will release), not rebuilt when a block unfreezes:
frozen parameters get no gradient, so the optimizer skips them and they stay bitwise unchanged,
and the optimizer's param groups (and so its checkpointed state) are the same at every step.
Which blocks train is a pure function of the step, so a resumed run needs no saved state.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bigtrain.build.common import BuildWrapper, strategy_name
from bigtrain.config import RunConfig
from bigtrain.core.callback import Callback
from bigtrain.core.state import TrainState
from bigtrain.errors import ConfigError
from bigtrain.optim import make_optimizer
from bigtrain.optim.param_groups import decays
from bigtrain.transfer.freeze import (
    freeze_blocks,
    freeze_patterns,
    frozen_norm_layers,
    lr_scale_groups,
    set_trainable,
    unfrozen_count,
)


class GradualUnfreezing(Callback):
    """Before each step: release the top-most frozen blocks due at this step (ULMFiT), and keep
    frozen batch-norm layers in inference mode (the loop's ``model.train()`` resets them)."""

    def __init__(
        self,
        blocks: list[nn.Module],
        every: int | None,
        keep_frozen: set[int],
        norm_stats: bool,
        model: nn.Module,
    ) -> None:
        self.blocks, self.every, self.keep_frozen = blocks, every, keep_frozen
        self.norm_stats, self.model = norm_stats, model
        self.released = 0
        self.norms = frozen_norm_layers(model) if norm_stats else []

    def release(self, step: int) -> None:
        """Make the blocks due at ``step`` trainable (never re-freezes: the count only grows)."""
        k = unfrozen_count(step, self.every, len(self.blocks))
        if k == self.released:
            return
        for block in self.blocks[len(self.blocks) - k :]:
            set_trainable((p for p in block.parameters() if id(p) not in self.keep_frozen), True)
        self.released = k
        if self.norm_stats:
            self.norms = frozen_norm_layers(self.model)

    def on_batch_start(self, state: TrainState) -> None:
        self.release(state.step)
        for m in self.norms:
            m.eval()


def _param_groups(
    model: nn.Module, cfg: RunConfig, keep: list[nn.Parameter]
) -> list[dict[str, Any]]:
    """Optimizer groups: one per (lr scale pattern, decay / no decay)."""
    o, ft = cfg.optim, cfg.finetune
    groups = []
    for pattern, scale, params in lr_scale_groups(model, ft.lr_scales, keep):
        decay = [p for p in params if decays(p, o.decay_filter)]
        no_decay = [p for p in params if not decays(p, o.decay_filter)]
        for tag, ps, wd in (("decay", decay, o.weight_decay), ("no_decay", no_decay, 0.0)):
            if ps:
                name = f"{pattern}:{tag}"
                # lr set here too: the loop only rewrites it when the schedule's value changes
                groups.append(
                    {"name": name, "params": ps, "weight_decay": wd, "lr_scale": scale,
                     "lr": o.lr * scale}
                )  # fmt: skip
    return groups


class Transfer(BuildWrapper):
    """``finetune:``: freeze by pattern / first blocks, gradual unfreezing, ``lr_scales``."""

    def __init__(self, cfg: RunConfig, total_steps: int) -> None:
        ft = cfg.finetune
        if ft is None:
            raise ConfigError("the Transfer wrapper needs a finetune: section")
        if strategy_name(cfg) != "single":
            # freezing happens after the strategy wrapped the model: DDP would wait for the
            # gradients of parameters that no longer get any
            raise ConfigError("finetune: runs on one device for now (distributed.strategy single)")
        if cfg.lora is not None:
            raise ConfigError(
                "finetune: and lora: both decide what trains; use one of them (lora already "
                "freezes everything but its adapters)"
            )
        if cfg.optim.name == "muon" and (ft.lr_scales or ft.unfreeze_every):
            raise ConfigError(
                "finetune.lr_scales / unfreeze_every build their own param groups, which "
                "optim.name muon does not take; use adamw"
            )
        if ft.unfreeze_every is not None and ft.unfreeze_every > total_steps:
            raise ConfigError(
                f"finetune.unfreeze_every {ft.unfreeze_every} is longer than the run "
                f"({total_steps} steps): no block would ever unfreeze"
            )
        self.ft = ft
        self.blocks: list[nn.Module] = []
        self.keep_frozen: set[int] = set()
        self.model: nn.Module | None = None

    def wrap_model(self, model: nn.Module, cfg: RunConfig) -> nn.Module:
        ft = self.ft
        by_name = dict(model.named_parameters())
        if ft.freeze:
            self.keep_frozen = {id(by_name[n]) for n in freeze_patterns(model, ft.freeze)}
        if ft.freeze_blocks:
            self.blocks = freeze_blocks(model, ft.freeze_blocks)
        if not any(p.requires_grad for p in model.parameters()):
            raise ConfigError(
                "finetune: every parameter is frozen, nothing would train; freeze fewer "
                "(the head is never part of freeze_blocks)"
            )
        self.model = model
        return model

    def wrap_optimizer(
        self, optimizer: torch.optim.Optimizer, model: nn.Module, cfg: RunConfig
    ) -> torch.optim.Optimizer:
        ft = self.ft
        if not ft.lr_scales and not ft.unfreeze_every:
            return optimizer  # the default groups over what trains now are right
        keep = [p for p in model.parameters() if p.requires_grad]
        if ft.unfreeze_every:
            later = {id(p): p for b in self.blocks for p in b.parameters()}
            keep += [p for i, p in later.items() if i not in self.keep_frozen]
        return make_optimizer(_param_groups(model, cfg, keep), cfg.optim)

    def callbacks(self, cfg: RunConfig) -> dict[str, Callback]:
        ft = self.ft
        norms = ft.freeze_norm_stats and bool(frozen_norm_layers(self.model))
        if not ft.unfreeze_every and not norms:
            return {}
        cb = GradualUnfreezing(
            self.blocks, ft.unfreeze_every, self.keep_frozen, ft.freeze_norm_stats, self.model
        )
        return {"finetune": cb}
