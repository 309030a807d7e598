"""The ``quantize:`` section wired into a run: quantization-aware training (docs/quantization.md).

At build time the model is FX-prepared with fake quantization of weights and activations
(``compress.quantize.prepare_static(..., qat=True)``), so every checkpoint of the run, the
first included, holds the same names (observer ranges included): a resumed run and
``bigtrain eval`` rebuild the same structure. ``bigtrain compress quantize RUN --out OUT``
converts the trained run to int8. A callback freezes ranges and BatchNorm statistics on
schedule.
"""

from __future__ import annotations

import torch
from torch import nn

from bigtrain.build.common import BuildWrapper, strategy_name
from bigtrain.compress.quantize import freeze_qat, prepare_static
from bigtrain.config import RunConfig
from bigtrain.core.callback import Callback
from bigtrain.core.state import TrainState
from bigtrain.errors import ConfigError


class FreezeQAT(Callback):
    """Freeze observers / BatchNorm statistics once the run reaches the recipe's steps.

    Observer on/off flags are buffers (checkpointed with the model); BatchNorm freezing is an
    attribute, so it is re-applied after a resume: the first step past the threshold does it.
    """

    def __init__(self, model: nn.Module, observers_step: int | None, bn_step: int | None):
        self.model, self.observers_step, self.bn_step = model, observers_step, bn_step
        self._done: set[str] = set()

    def on_step_end(self, state: TrainState) -> None:
        for what, at in (("observers", self.observers_step), ("batch_norm", self.bn_step)):
            if at is not None and state.step >= at and what not in self._done:
                freeze_qat(self.model, **{what: True})
                self._done.add(what)


class QuantizationAware(BuildWrapper):
    """Fake-quantized training of the recipe's model (``quantize: {method: qat}``)."""

    def __init__(self, cfg: RunConfig, total_steps: int) -> None:
        q = cfg.quantize
        if strategy_name(cfg) != "single":
            raise ConfigError(
                "quantize: QAT traces the model with torch.fx, which DDP/FSDP wrappers hide; "
                "set distributed.strategy=single"
            )
        for name, at in (("freeze_observers_step", q.freeze_observers_step),
                         ("freeze_bn_step", q.freeze_bn_step)):  # fmt: skip
            if at is not None and at > total_steps:
                raise ConfigError(
                    f"quantize.{name} {at} is after the run's last step {total_steps}; "
                    "lower it or train longer"
                )
        self.cfg = q
        self.model: nn.Module | None = None

    def wrap_model(self, model: nn.Module, cfg: RunConfig) -> nn.Module:
        q = self.cfg
        # FX traces symbolically: the example's values and shape are never run
        example = torch.zeros(1)
        self.model = prepare_static(model, example, q.backend, qat=True, observer=q.observer)
        return self.model

    def callbacks(self, cfg: RunConfig) -> dict[str, Callback]:
        q = self.cfg
        if q.freeze_observers_step is None and q.freeze_bn_step is None:
            return {}
        return {"freeze_qat": FreezeQAT(self.model, q.freeze_observers_step, q.freeze_bn_step)}
