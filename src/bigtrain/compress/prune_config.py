"""The recipe's ``prune:`` section: magnitude pruning during training (docs/pruning.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PruneScheduleConfig(BaseModel):
    """When masks are updated: at ``start_step``, every ``every`` steps, and at ``end_step``,
    following Zhu & Gupta's cubic ramp from ``initial_sparsity`` to ``amount``.

    ``end_step`` null: half the run (the second half fine-tunes with the masks held).
    ``end_step == start_step``: one-shot pruning at that step, then training with masks held.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    start_step: int = Field(0, ge=0)
    end_step: int | None = Field(None, ge=0)
    every: int = Field(100, ge=1)
    initial_sparsity: float = Field(0.0, ge=0.0, lt=1.0)


class PruneConfig(BaseModel):
    """``prune: {amount: 0.8, structured: false, scope: global, schedule: {...}}``.

    Attributes:
        amount: final sparsity, the fraction of the selected weights (or units) zeroed.
        structured: prune whole conv channels, hidden neurons and attention heads (per layer)
            instead of single weights.
        scope: unstructured only: ``global`` ranks every layer's weights together, ``layer``
            prunes ``amount`` of each layer.
        exclude: glob patterns of module names left dense (``["head.net.2"]``).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    amount: float = Field(ge=0.0, lt=1.0)
    structured: bool = False
    scope: Literal["global", "layer"] = "global"
    exclude: list[str] = []
    schedule: PruneScheduleConfig = PruneScheduleConfig()

    @model_validator(mode="after")
    def _check(self) -> PruneConfig:
        s = self.schedule
        if s.end_step is not None and s.end_step < s.start_step:
            raise ValueError(
                f"schedule.end_step {s.end_step} is before schedule.start_step {s.start_step}"
            )
        if s.initial_sparsity > self.amount:
            raise ValueError(
                f"schedule.initial_sparsity {s.initial_sparsity} exceeds amount {self.amount}"
            )
        return self
