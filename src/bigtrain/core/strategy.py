"""Strategy: where tensors live and how gradients are made and applied. Chosen once per run.

The loop calls ``autocast()``, ``backward(loss)``, ``optimizer_step(opt)`` and ``to_device(batch)``
and never asks which strategy it has. DDP and FSDP strategies live in ``bigtrain.distributed``.
"""

from __future__ import annotations

import contextlib
from typing import Any, Protocol

import torch
from torch import nn

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Strategy(Protocol):
    device: torch.device
    is_main: bool

    def setup(self, model: nn.Module) -> nn.Module: ...
    def to_device(self, batch: Any) -> Any: ...
    def autocast(self) -> contextlib.AbstractContextManager: ...
    def backward(self, loss: torch.Tensor) -> None: ...
    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None: ...
    def reduce_mean(self, value: torch.Tensor) -> torch.Tensor: ...


def move_to(batch: Any, device: torch.device) -> Any:
    """Move a tensor or a tuple/list/dict of tensors to ``device`` (no-op when already there)."""
    if isinstance(batch, torch.Tensor):
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch


class SingleDevice:
    """One CPU or GPU. ``precision`` is "fp32", "bf16" (autocast) or "fp16" (autocast + scaler)."""

    is_main = True

    def __init__(self, device: str | torch.device = "cpu", precision: str = "fp32") -> None:
        self.device = torch.device(device)
        self.precision = precision
        self._dtype = _DTYPES[precision]
        self._scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None

    def setup(self, model: nn.Module) -> nn.Module:
        return model.to(self.device)

    def to_device(self, batch: Any) -> Any:
        return batch if self.device.type == "cpu" else move_to(batch, self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self._dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._dtype)

    def backward(self, loss: torch.Tensor) -> None:
        if self._scaler is not None:
            loss = self._scaler.scale(loss)
        loss.backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Make gradients true-scale before clipping or inspection (fp16 only)."""
        if self._scaler is not None:
            self._scaler.unscale_(optimizer)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._scaler is not None:
            self._scaler.step(optimizer)
            self._scaler.update()
        else:
            optimizer.step()

    def reduce_mean(self, value: torch.Tensor) -> torch.Tensor:
        return value
