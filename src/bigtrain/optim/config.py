"""Typed configs for optimizers, LR schedules, batch-size schedules and penalties.

Optional fields default to ``None`` ("use the optimizer's/schedule's own default"). Whether a
field applies to the chosen ``name`` is checked when the object is built (``build_optimizer``,
``build_schedule``), because the registries decide what each name takes.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class OptimConfig(BaseModel):
    """Optimizer choice and hyperparameters.

    ``decay_filter="matrices"`` applies weight decay only to parameters with ``ndim >= 2``
    (linear/conv weights and embeddings); biases and norm weights go to a no-decay group.
    ``"all"`` decays every trainable parameter.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "adamw"
    lr: float = Field(default=1e-3, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    decay_filter: Literal["matrices", "all"] = "matrices"
    momentum: float | None = Field(default=None, ge=0.0, lt=1.0)
    nesterov: bool | None = None
    betas: tuple[float, float] | None = None
    eps: float | None = Field(default=None, gt=0.0)
    alpha: float | None = Field(default=None, ge=0.0, le=1.0)  # RMSprop smoothing constant
    adam_lr: float | None = Field(default=None, gt=0.0)  # muon: its AdamW partner's LR
    foreach: bool | None = None
    fused: bool | None = None

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, v: tuple[float, float] | None) -> tuple[float, float] | None:
        if v is not None and not all(0.0 <= b < 1.0 for b in v):
            raise ValueError(f"betas must both be in [0, 1), got {v}")
        return v


class ScheduleConfig(BaseModel):
    """LR schedule choice. ``min_lr`` is absolute; ``min_lr_ratio`` is relative to the base LR.

    Fields per schedule: constant (warmup_steps), step (step_size, gamma), multistep (milestones,
    gamma), exponential (gamma), warmup_cosine / linear (warmup_steps, min_lr), wsd (warmup_steps,
    min_lr, decay_fraction), one_cycle (pct_start, div_factor, final_div_factor, anneal_strategy),
    reduce_on_plateau (mode, factor, patience, threshold, threshold_mode, cooldown, min_lr).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = "constant"
    warmup_steps: int = Field(default=0, ge=0)
    min_lr: float = Field(default=0.0, ge=0.0)
    min_lr_ratio: float | None = Field(default=None, ge=0.0, le=1.0)
    step_size: int | None = Field(default=None, gt=0)
    gamma: float | None = Field(default=None, gt=0.0)
    milestones: tuple[int, ...] | None = None
    decay_fraction: float | None = Field(default=None, gt=0.0, le=1.0)
    pct_start: float | None = Field(default=None, gt=0.0, lt=1.0)
    div_factor: float | None = Field(default=None, gt=0.0)
    final_div_factor: float | None = Field(default=None, gt=0.0)
    anneal_strategy: Literal["cos", "linear"] | None = None
    mode: Literal["min", "max"] | None = None
    factor: float | None = Field(default=None, gt=0.0, lt=1.0)
    patience: int | None = Field(default=None, ge=0)
    threshold: float | None = Field(default=None, ge=0.0)
    threshold_mode: Literal["rel", "abs"] | None = None
    cooldown: int | None = Field(default=None, ge=0)

    @field_validator("milestones")
    @classmethod
    def _sorted_milestones(cls, v: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if v is not None and (list(v) != sorted(set(v)) or any(m < 0 for m in v)):
            raise ValueError(f"milestones must be increasing, distinct and >= 0, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _one_min_lr(self) -> ScheduleConfig:
        if self.min_lr_ratio is not None and self.min_lr != 0.0:
            raise ValueError("set either min_lr (absolute) or min_lr_ratio, not both")
        return self


class BatchSizeScheduleConfig(BaseModel):
    """Batch size as a function of the step.

    ``linear_ramp`` grows linearly from ``start`` to ``end`` over ``ramp_steps``; ``step_ramp``
    doubles at evenly spaced steps and reaches ``end`` at ``ramp_steps``. Sizes are rounded to a
    multiple of ``multiple_of`` (``start`` and ``end`` must be multiples of it).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["constant", "linear_ramp", "step_ramp"] = "constant"
    start: int = Field(gt=0)
    end: int | None = Field(default=None, gt=0)
    ramp_steps: int = Field(default=0, ge=0)
    multiple_of: int = Field(default=1, gt=0)


class RegularizationConfig(BaseModel):
    """Penalties added to the loss: ``loss + l1 * sum|w| + l2 * sum w^2``.

    Both non-zero is the Elastic Net. ``apply_to="weights"`` penalises parameters with
    ``ndim >= 2`` only (not biases or norm weights); ``"all"`` penalises every trainable one.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    l1: float = Field(default=0.0, ge=0.0)
    l2: float = Field(default=0.0, ge=0.0)
    apply_to: Literal["weights", "all"] = "weights"
