"""The ``privacy:`` section wired into a run: DP-SGD as a build-time wrapper (docs/privacy.md).

Opacus replaces three things together, each at its seam of ``assemble``: the model gains
per-example gradients (``wrap_model``), the optimizer clips and noises them (``wrap_optimizer``)
and the loader draws Poisson batches (``wrap_loader``); a callback holds the accountant. The
loop itself is unchanged, so what it would do on its own with a gradient (clip it, accumulate
micro-batches) is refused here instead of silently undoing the mechanism.
"""

from __future__ import annotations

import sys

import torch
from torch import nn

from bigtrain.build.common import BuildWrapper, resolve_device, resolve_precision, strategy_name
from bigtrain.config.schema import RunConfig
from bigtrain.core.callback import Callback
from bigtrain.core.state import BatchSource
from bigtrain.core.task import Task
from bigtrain.data.text_config import TextDataConfig
from bigtrain.errors import ConfigError
from bigtrain.privacy import (
    DPTask,
    PoissonLoader,
    PrivacyAccountant,
    calibrate_noise,
    make_dp_optimizer,
    make_private_model,
    require_opacus,
)


def check_privacy_settings(cfg: RunConfig) -> None:
    """Refuse, in one line each, what DP-SGD and the rest of the recipe cannot do together."""
    tr = cfg.trainer
    if isinstance(cfg.data, TextDataConfig):
        raise ConfigError(
            f"privacy: DP-SGD is wired for tabular and image data, not text data "
            f"'{cfg.data.name}'; remove the privacy section"
        )
    if tr.grad_accum > 1:
        raise ConfigError(
            "privacy: trainer.grad_accum must be 1 with DP-SGD (each step clips the per-example "
            "gradients of one Poisson batch); lower data.batch_size instead if memory is short"
        )
    for key, value in (
        ("clip_grad_norm", tr.clip_grad_norm),
        ("clip_grad_value", tr.clip_grad_value),
    ):
        if value is not None:
            raise ConfigError(
                f"privacy: remove trainer.{key}: DP-SGD clips each example's gradient to "
                "privacy.max_grad_norm instead (the loop's clipping would act on the raw "
                "gradient the DP optimizer replaces)"
            )
    reg = cfg.regularization
    if reg.l1 or reg.l2:
        raise ConfigError(
            "privacy: remove regularization.l1/l2: a penalty's gradient bypasses the "
            "per-example clipping; use optim.weight_decay instead"
        )
    if cfg.batch_size_schedule is not None or cfg.dynamic_batch is not None:
        raise ConfigError(
            "privacy: remove batch_size_schedule / dynamic_batch: the accountant assumes one "
            "sampling rate (data.batch_size / examples) for the whole run"
        )
    if tr.compile is True:
        raise ConfigError(
            "privacy: set trainer.compile=false: Opacus' per-example gradient hooks do not "
            "run under torch.compile"
        )
    precision = resolve_precision(tr.precision, resolve_device(tr.device))
    if precision != "fp32":
        raise ConfigError(
            f"privacy: set trainer.precision=fp32 (resolved to {precision}): per-example "
            "gradients are clipped and noised in fp32"
        )
    strategy = strategy_name(cfg)
    if strategy != "single":
        raise ConfigError(
            f"privacy: DP-SGD runs in one process, not with distributed.strategy {strategy} "
            "(the Poisson sampler and the accountant are not sharded); start one process"
        )


class Privacy(BuildWrapper):
    """DP-SGD for a recipe's ``privacy:`` section; ``total_steps`` is the run's planned length
    (a ``target_epsilon`` is spent exactly at its end)."""

    def __init__(self, cfg: RunConfig, total_steps: int) -> None:
        require_opacus()
        check_privacy_settings(cfg)
        self.pc = cfg.privacy  # set: default_wrappers adds this wrapper only then
        self.total_steps = total_steps
        self.optimizer = None
        self.accountant: PrivacyAccountant | None = None

    def wrap_model(self, model: nn.Module, cfg: RunConfig) -> nn.Module:
        return make_private_model(model, self.pc.fix_modules, cfg.model.fields())

    def wrap_task(self, task: Task, model: nn.Module, cfg: RunConfig) -> Task:
        return DPTask(task, list(model.parameters()))

    def wrap_optimizer(
        self, optimizer: torch.optim.Optimizer, model: nn.Module, cfg: RunConfig
    ) -> torch.optim.Optimizer:
        # the noise and the batch it divides by need the number of examples, which only the
        # loader knows: wrap_loader sets both
        self.optimizer = make_dp_optimizer(optimizer, 0.0, self.pc.max_grad_norm, 1)
        return self.optimizer

    def wrap_loader(self, loader: BatchSource, cfg: RunConfig) -> BatchSource:
        x, y, n = getattr(loader, "x", None), getattr(loader, "y", None), getattr(loader, "n", 0)
        if x is None or y is None or not n:
            raise ConfigError(
                f"privacy: DP-SGD needs (x, y) training data; {type(loader).__name__} is not"
            )
        pc, batch = self.pc, loader.batch_size
        if pc.delta >= 1 / n:
            raise ConfigError(
                f"privacy.delta {pc.delta:g} is not below 1/N = 1/{n}: such a guarantee allows "
                "leaking an example outright; use a smaller delta (e.g. 1e-5)"
            )
        rate = batch / n
        sigma = pc.noise_multiplier
        if sigma is None:
            sigma = calibrate_noise(pc.target_epsilon, pc.delta, rate, self.total_steps)
        self.optimizer.noise_multiplier = sigma
        self.optimizer.expected_batch_size = batch
        self.accountant = PrivacyAccountant(
            pc.delta, sigma, rate, pc.max_grad_norm, self.total_steps,
            log_every=cfg.trainer.log_every, target_epsilon=pc.target_epsilon,
            set_noise=self._set_noise, report=lambda m: print(m, file=sys.stderr),
        )  # fmt: skip
        accountant = self.accountant
        self.optimizer.attach_step_hook(lambda opt: accountant.step(opt.noise_multiplier))
        if not pc.poisson_sampling:
            return loader  # accounted as if Poisson-sampled at the same rate, as Opacus does
        return PoissonLoader(
            x, y, batch, len(loader), seed=cfg.seed, transform=getattr(loader, "transform", None)
        )

    def _set_noise(self, sigma: float) -> None:
        self.optimizer.noise_multiplier = sigma

    def callbacks(self, cfg: RunConfig) -> dict[str, Callback]:
        return {"privacy": self.accountant} if self.accountant is not None else {}
