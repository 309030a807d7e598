"""The ``prune:`` section wired into a run: masks from build time, a schedule callback.

The model's prunable tensors are reparametrised with all-ones masks at build time
(``weight_orig`` + ``weight_mask`` in the state dict) so that every checkpoint of the run, the
first included, holds the same names: a resumed run and ``bigtrain eval`` build the same
structure and load the saved masks strictly. The callback raises the sparsity on schedule.
"""

from __future__ import annotations

from torch import nn

from bigtrain.build.common import BuildWrapper, strategy_name
from bigtrain.compress.prune import add_identity_mask, prunable_layers
from bigtrain.compress.prune_schedule import PruneSchedule
from bigtrain.compress.prune_structured import structured_targets
from bigtrain.config import RunConfig
from bigtrain.core.callback import Callback
from bigtrain.errors import ConfigError


class Prune(BuildWrapper):
    """Gradual (or one-shot) magnitude pruning during training (docs/pruning.md)."""

    def __init__(self, cfg: RunConfig, total_steps: int) -> None:
        p = cfg.prune
        if strategy_name(cfg) != "single":
            raise ConfigError(
                "prune: masks are wired for single-process runs; set distributed.strategy=single"
            )
        s = p.schedule
        self.end = s.end_step if s.end_step is not None else max(s.start_step, total_steps // 2)
        if self.end > total_steps:
            raise ConfigError(
                f"prune.schedule.end_step {self.end} is after the run's last step {total_steps}; "
                "lower it or train longer"
            )
        self.cfg = p
        self.model: nn.Module | None = None

    def wrap_model(self, model: nn.Module, cfg: RunConfig) -> nn.Module:
        p = self.cfg
        exclude = tuple(p.exclude)
        if p.structured:
            targets = structured_targets(model, exclude)
            if not targets:
                raise ConfigError(
                    f"prune: {type(model).__name__} has no units structured pruning can remove; "
                    "set prune.structured=false"
                )
        else:
            targets = [(name, "weight") for name, _ in prunable_layers(model, exclude)]
            if not targets:
                raise ConfigError("prune: the model has no Linear or Conv layer to prune")
        for mname, tname in targets:
            add_identity_mask(model.get_submodule(mname), tname)
        self.model = model
        return model

    def callbacks(self, cfg: RunConfig) -> dict[str, Callback]:
        p, s = self.cfg, self.cfg.schedule
        schedule = PruneSchedule(
            self.model,
            p.amount,
            s.start_step,
            self.end,
            s.every,
            s.initial_sparsity,
            p.structured,
            p.scope,
            tuple(p.exclude),
        )
        return {"prune": schedule}
