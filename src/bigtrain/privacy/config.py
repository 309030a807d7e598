"""The recipe's ``privacy:`` section (docs/privacy.md)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class PrivacyConfig(BaseModel):
    """Train with DP-SGD (Opacus): per-example clipping, Gaussian noise, an RDP accountant.

    Give either ``target_epsilon`` (the noise multiplier is then calibrated so that the planned
    steps spend exactly that budget at ``delta``) or ``noise_multiplier`` (the epsilon spent
    is reported). ``max_grad_norm`` bounds each example's gradient norm. With
    ``poisson_sampling`` (the default) every step's batch holds each training example
    independently with probability ``data.batch_size / N``, the sampling the accountant
    assumes; ``false`` keeps the shuffled fixed-size batches and accounts for them as if they
    were Poisson-sampled (as Opacus does). ``fix_modules`` swaps layers DP-SGD cannot train
    for Opacus' replacements (``ModuleValidator.fix``: BatchNorm -> GroupNorm,
    LSTM -> DPLSTM, ...).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_epsilon: float | None = Field(None, gt=0, allow_inf_nan=False)
    delta: float = Field(1e-5, gt=0, lt=1)
    noise_multiplier: float | None = Field(None, ge=0, allow_inf_nan=False)
    max_grad_norm: float = Field(1.0, gt=0, allow_inf_nan=False)
    poisson_sampling: bool = True
    fix_modules: bool = False

    @model_validator(mode="after")
    def _one_way_to_set_the_noise(self) -> PrivacyConfig:
        if (self.target_epsilon is None) == (self.noise_multiplier is None):
            raise ValueError(
                "set privacy.target_epsilon (the budget, with privacy.delta) or "
                "privacy.noise_multiplier, not both"
                if self.target_epsilon is not None
                else "set privacy.target_epsilon (with privacy.delta) or privacy.noise_multiplier"
            )
        return self
