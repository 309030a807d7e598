"""Dynamic batch size from the gradient noise scale (McCandlish et al. 2018, "An Empirical Model
of Large-Batch Training", appendix A).

The simple noise scale ``B_simple = tr(Sigma) / |G|^2`` (Sigma: the per-example gradient
covariance, G: the true gradient) is about the batch size beyond which a bigger batch stops
buying fewer steps. It is estimated for free from gradient accumulation: the gradient after the
first micro-batch (``B_small`` examples) and the complete gradient (``B_big``) have
``E|G_B|^2 = |G|^2 + tr(Sigma) / B``, which two batch sizes solve for both unknowns
(:func:`noise_estimates`). Both estimates are averaged with an EMA before dividing
(:class:`NoiseScaleEMA`), as the paper advises: one step's estimate is very noisy.

:class:`DynamicBatch` grows the global batch toward ``fraction * B_simple`` by raising the
number of micro-batches (their size stays fixed), and scales the learning rate by a rule.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from bigtrain.core.callback import Callback
from bigtrain.core.state import TrainState
from bigtrain.core.steps import split_batch
from bigtrain.errors import ConfigError

LrScaling = Literal["none", "linear", "sqrt"]


class DynamicBatchConfig(BaseModel):
    """The recipe's ``dynamic_batch:`` section (docs/dynamic-batch.md).

    The run starts at ``data.batch_size`` (the global batch) split into ``trainer.grad_accum``
    (>= 2) micro-batches; the micro-batch size stays fixed and the accumulation grows. Every
    ``adapt_every`` steps from ``warmup_steps`` on, the batch grows toward ``fraction`` times
    the measured noise scale, by at most ``max_growth`` times (and at least one micro-batch), up
    to ``max_batch_size`` (rounded down to a multiple of the micro-batch). It never shrinks. The
    LR is multiplied by ``(batch / start batch)`` (``linear``), its square root (``sqrt``) or 1.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch_size: int = Field(gt=0)
    adapt_every: int = Field(default=50, ge=1)
    warmup_steps: int = Field(default=100, ge=0)
    max_growth: float = Field(default=2.0, gt=1.0)
    ema_beta: float = Field(default=0.99, ge=0.0, lt=1.0)
    fraction: float = Field(default=1.0, gt=0.0)
    lr_scaling: LrScaling = "none"


# ---------------------------------------------------------------------- the estimator
def noise_estimates(
    sq_small: float, sq_big: float, b_small: float, b_big: float
) -> tuple[float, float]:
    """Unbiased estimates ``(|G|^2, tr(Sigma))`` from two squared gradient norms.

    ``sq_small = |G_small|^2`` is the squared norm of the mean gradient of ``b_small`` examples,
    ``sq_big`` that of ``b_big > b_small`` examples (McCandlish et al. 2018, eqs. A.2-A.3)::

        |G|^2     ~ (b_big |G_big|^2 - b_small |G_small|^2) / (b_big - b_small)
        tr(Sigma) ~ (|G_small|^2 - |G_big|^2) / (1 / b_small - 1 / b_big)
    """
    if not 0 < b_small < b_big:
        raise ValueError(f"need 0 < b_small < b_big, got {b_small} and {b_big}")
    g2 = (b_big * sq_big - b_small * sq_small) / (b_big - b_small)
    trace = (sq_small - sq_big) / (1.0 / b_small - 1.0 / b_big)
    return g2, trace


@dataclass
class NoiseScaleEMA:
    """EMAs of the ``|G|^2`` and ``tr(Sigma)`` estimates; ``value`` is their ratio.

    Both EMAs start at 0 and have seen the same number of updates, so their bias corrections
    ``1 - beta**count`` are equal and cancel in the ratio: no correction is applied.
    """

    beta: float = 0.99
    g2: float = 0.0
    trace: float = 0.0
    count: int = 0

    def update(self, g2: float, trace: float) -> None:
        self.g2 = self.beta * self.g2 + (1.0 - self.beta) * g2
        self.trace = self.beta * self.trace + (1.0 - self.beta) * trace
        self.count += 1

    @property
    def value(self) -> float | None:
        """``B_simple`` in examples, or None before a measurement or while an EMA is <= 0 (the
        early estimates are noisy enough to be negative)."""
        if not self.count or self.g2 <= 0.0 or self.trace <= 0.0:
            return None
        return self.trace / self.g2


def squared_grad_norm(params: list[torch.Tensor]) -> torch.Tensor | None:
    """``sum |p.grad|^2`` over ``params`` as a float64 scalar tensor (no sync), or None when no
    parameter has a gradient."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return None
    norms = torch._foreach_norm(grads, 2, dtype=torch.float64)  # one kernel per dtype/device
    return torch.stack(norms).square().sum()


def next_accumulation(
    accum: int,
    micro: int,
    noise_scale: float,
    *,
    fraction: float = 1.0,
    max_growth: float = 2.0,
    max_accum: int,
) -> int:
    """Micro-batches per step after one adaptation: grow toward ``fraction * noise_scale``
    examples (never beyond it), by at most ``max_growth`` times but at least one micro-batch,
    to at most ``max_accum``; never shrink."""
    target = fraction * noise_scale
    if target <= accum * micro:
        return accum
    cap = max(accum + 1, math.floor(accum * max_growth))
    return max(accum, min(math.floor(target / micro), cap, max_accum))


def lr_multiplier(rule: LrScaling, batch: int, start_batch: int) -> float:
    """The LR factor at ``batch`` for a run tuned at ``start_batch``."""
    if rule == "linear":
        return batch / start_batch
    if rule == "sqrt":
        return math.sqrt(batch / start_batch)
    return 1.0


def check_setup(
    cfg: DynamicBatchConfig,
    *,
    batch_size: int,
    grad_accum: int,
    world_size: int,
    max_epochs: int | None,
    batch_size_schedule: bool,
    loss_scaling: bool,
) -> int:
    """Refuse what dynamic batching cannot honour (one-line ConfigError); returns the global
    micro-batch size ``batch_size // grad_accum``."""
    if batch_size_schedule:
        raise ConfigError(
            "dynamic_batch and batch_size_schedule both set the batch size; use one of them"
        )
    if max_epochs is not None:
        raise ConfigError(
            "dynamic_batch needs trainer.max_steps and no trainer.max_epochs (set "
            "trainer.max_epochs=null): a growing batch shortens the epochs, so the planned "
            "steps and the LR schedule's length would be wrong"
        )
    if grad_accum < 2:
        raise ConfigError(
            f"dynamic_batch needs trainer.grad_accum >= 2, got {grad_accum}: the noise is "
            "measured between the first micro-batch's gradient and the whole batch's "
            "(data.batch_size stays the global batch)"
        )
    if batch_size % (grad_accum * world_size):
        raise ConfigError(
            f"dynamic_batch: data.batch_size {batch_size} is not a multiple of trainer.grad_accum "
            f"({grad_accum}) x {world_size} process(es); micro-batches must be of equal size"
        )
    if loss_scaling:
        raise ConfigError(
            "dynamic_batch does not support trainer.precision fp16: the first micro-batch's "
            "gradient is still loss-scaled when it is measured; use bf16 or fp32"
        )
    if cfg.max_batch_size < batch_size:
        raise ConfigError(
            f"dynamic_batch.max_batch_size ({cfg.max_batch_size}) is below data.batch_size "
            f"({batch_size}), the batch it starts from"
        )
    return batch_size // grad_accum


def _rows(batch: Any) -> int:
    """Examples in a batch: dim 0 of its first tensor (as ``split_batch`` counts them)."""
    if isinstance(batch, dict):
        batch = next(iter(batch.values()))
    elif isinstance(batch, (tuple, list)):
        batch = batch[0]
    return int(batch.shape[0])


# ---------------------------------------------------------------------- the callback
class DynamicBatch(Callback):
    """Measures ``B_simple`` every step and grows the batch toward it (see DynamicBatchConfig).

    Every step with at least two micro-batches: the squared gradient norm after the first
    micro-batch (divided by its share, so it is that micro-batch's mean gradient) and after the
    last (before clipping) feed :func:`noise_estimates`, then :class:`NoiseScaleEMA`. Under
    DDP the first micro-batch's gradient is local to the process (``B_small`` is the local
    micro-batch) and the final one is all-reduced (``B_big`` is the global batch); the small
    norms are averaged over processes (still unbiased) so every process holds the same
    estimate, and each adaptation is broadcast from the main process.

    Adaptations happen at AFTER_STEP, between steps, as a batch-size schedule's would: the
    trainer's ``grad_accum``, the loader's ``batch_size`` and every param group's ``lr_scale``
    (and ``lr``: the loop rewrites it only when the schedule's LR changes) are set for the next
    step. Shares ``state.noise_scale`` and ``state.batch_size`` with the logger. The state
    (EMAs, accumulation, LR multiplier) is checkpointed; a resumed run restores the trainer's
    accumulation and the loader's batch size at FIT_START.
    """

    def __init__(self, cfg: DynamicBatchConfig) -> None:
        self.cfg = cfg
        self.ema = NoiseScaleEMA(cfg.ema_beta)
        self.accum: int | None = None  # micro-batches per step now (None until SETUP)
        self.lr_multiplier = 1.0
        self.start_accum = self.micro = self.start_batch = self.max_accum = 0
        self._params: list[torch.Tensor] = []
        self._base: list[tuple[float, float]] = []  # each group's (lr_scale, lr) as built
        self._micro_index = 0
        self._small: tuple[torch.Tensor, int] | None = None  # this step's (|G_small|^2, B_small)

    @property
    def batch_size(self) -> int:
        """The global batch of the next step: micro-batch size x accumulation."""
        return self.micro * (self.accum or self.start_accum)

    def on_setup(self, state: TrainState) -> None:
        trainer = state.trainer
        strategy = trainer.strategy
        self.start_accum = trainer.grad_accum
        self.start_batch = state.train_data.batch_size
        self.micro = check_setup(
            self.cfg,
            batch_size=self.start_batch,
            grad_accum=self.start_accum,
            world_size=strategy.world_size,
            max_epochs=trainer.epoch_limit,
            batch_size_schedule=trainer.batch_size_schedule is not None,
            loss_scaling=strategy.loss_scaling,
        )
        self.max_accum = self.cfg.max_batch_size // self.micro
        if self.accum is None:
            self.accum = self.start_accum
        self._params = [p for p in state.model.parameters() if p.requires_grad]
        # SETUP comes before a resume loads the optimizer: these are the groups as built
        self._base = [(g.get("lr_scale", 1.0), g["lr"]) for g in state.optimizer.param_groups]

    def on_fit_start(self, state: TrainState) -> None:
        # after a resume: load_state_dict restored the accumulation the run had reached (the
        # LR multiplier is recomputed from it: the same expression gives the same float)
        if self.accum != state.trainer.grad_accum:
            self.apply(state, self.accum)
        state.noise_scale = self.ema.value

    def on_batch_start(self, state: TrainState) -> None:
        self._micro_index, self._small = 0, None
        state.batch_size = self.batch_size

    def on_micro_batch_end(self, state: TrainState) -> None:
        first = self._micro_index == 0
        self._micro_index += 1
        if not first or state.trainer.grad_accum < 2:
            return
        parts = split_batch(state.batch, state.trainer.grad_accum)  # views: the loop's split
        if len(parts) < 2:
            return  # a batch of one example: nothing to compare
        micro, share = parts[0]
        sq = squared_grad_norm(self._params)
        if sq is None:
            raise ConfigError(
                "dynamic_batch found no gradient after the first micro-batch: this strategy "
                "(FSDP) keeps it private until the step's end; use distributed.strategy ddp"
            )
        # the gradient holds share * (the micro-batch's mean gradient)
        self._small = (sq / (share * share), _rows(micro))

    def on_after_backward(self, state: TrainState) -> None:
        if self._small is None:
            return
        sq_small, b_small = self._small
        self._small = None
        strategy = state.trainer.strategy
        sq_big = squared_grad_norm(self._params)
        if sq_big is None:
            return
        if strategy.world_size > 1:  # each process's small norm is its own unbiased estimate
            sq_small = strategy.reduce_sum(sq_small) / strategy.world_size
        small, big = torch.stack([sq_small, sq_big]).tolist()  # the step's one sync
        if not (math.isfinite(small) and math.isfinite(big)):
            return  # a diverging step: HealthCheck reports it; keep the EMAs clean
        b_big = _rows(state.batch) * strategy.world_size
        if b_small >= b_big:
            return
        self.ema.update(*noise_estimates(small, big, b_small, b_big))
        state.noise_scale = self.ema.value

    def on_after_step(self, state: TrainState) -> None:
        cfg, step, noise = self.cfg, state.step, self.ema.value
        if step < cfg.warmup_steps or step % cfg.adapt_every:
            return
        accum = self.accum
        if noise is not None:
            accum = next_accumulation(
                accum,
                self.micro,
                noise,
                fraction=cfg.fraction,
                max_growth=cfg.max_growth,
                max_accum=self.max_accum,
            )
        strategy = state.trainer.strategy
        if strategy.world_size > 1:  # one process's float rounding must not split the others
            accum = strategy.broadcast_object(accum)
        if accum != self.accum:
            self.apply(state, accum)

    def apply(self, state: TrainState, accum: int) -> None:
        """Train the next steps with ``accum`` micro-batches and the LR rule's multiplier."""
        self.accum = accum
        state.trainer.grad_accum = accum
        state.train_data.batch_size = self.batch_size
        self.lr_multiplier = lr_multiplier(self.cfg.lr_scaling, self.batch_size, self.start_batch)
        for group, (base_scale, base_lr) in zip(state.optimizer.param_groups, self._base):
            group["lr_scale"] = base_scale * self.lr_multiplier
            if state.schedule is not None:  # the loop's own rule, with the new scale
                group["lr"] = state.lr * group["lr_scale"]
            else:
                group["lr"] = base_lr * self.lr_multiplier

    def state_dict(self) -> dict[str, Any]:
        return {
            "accum": self.accum,
            "lr_multiplier": self.lr_multiplier,
            "ema": {"g2": self.ema.g2, "trace": self.ema.trace, "count": self.ema.count},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.accum = int(state["accum"])
        self.lr_multiplier = float(state["lr_multiplier"])
        ema = state["ema"]
        self.ema = NoiseScaleEMA(
            self.cfg.ema_beta, float(ema["g2"]), float(ema["trace"]), int(ema["count"])
        )


__all__ = [
    "DynamicBatch",
    "DynamicBatchConfig",
    "NoiseScaleEMA",
    "check_setup",
    "lr_multiplier",
    "next_accumulation",
    "noise_estimates",
    "squared_grad_norm",
]
