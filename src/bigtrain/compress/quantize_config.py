"""The recipe's ``quantize:`` section: quantization-aware training (docs/quantization.md)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class QuantizeConfig(BaseModel):
    """``quantize: {method: qat, backend: x86, freeze_observers_step: 800}``.

    Training runs with fake int8 quantization of weights and activations (torch.ao FX QAT);
    ``bigtrain compress quantize RUN --out OUT`` converts the trained run to int8.

    Attributes:
        method: ``qat`` (the only training-time method; post-training dynamic/static
            quantization is the ``bigtrain compress quantize`` command).
        backend: the int8 CPU kernels the ranges are chosen for: ``x86`` (fbgemm + oneDNN),
            ``fbgemm``, ``onednn`` or ``qnnpack`` (ARM).
        observer: ``moving_average`` (the ranges follow a moving average of batch min/max:
            torch.ao's default QAT observer) or ``minmax`` (the running min/max).
        freeze_observers_step: from this step on, the ranges stop moving (the weights adapt to
            fixed ranges for the rest of the run); null: never.
        freeze_bn_step: from this step on, BatchNorm statistics stop updating; null: never.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["qat"] = "qat"
    backend: Literal["x86", "fbgemm", "onednn", "qnnpack"] = "x86"
    observer: Literal["moving_average", "minmax"] = "moving_average"
    freeze_observers_step: int | None = Field(None, ge=0)
    freeze_bn_step: int | None = Field(None, ge=0)
