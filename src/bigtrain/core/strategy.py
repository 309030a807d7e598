"""Strategy: where tensors live and how gradients are made, synchronised and applied.

Chosen once per run. The loop calls the methods below and never asks which strategy it has;
every method has a working single-process default here, so a strategy overrides only what it
changes. DDP and FSDP strategies live in ``bigtrain.distributed``.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def move_to(batch: Any, device: torch.device) -> Any:
    """Move a tensor or a tuple/list/dict of tensors to ``device`` (no-op when already there)."""
    if isinstance(batch, torch.Tensor):
        return batch if batch.device == device else batch.to(device, non_blocking=True)
    if isinstance(batch, (tuple, list)):
        return type(batch)(move_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch


class Strategy:
    """The protocol, with single-process defaults.

    Call order per run: ``setup(model)`` once, before the optimizer is built (a sharding strategy
    replaces parameters). Per step: ``gradient_sync(last)`` and ``autocast()`` around each
    micro-batch's forward and ``backward``, ``unscale_gradients`` once all micro-batches are done,
    then ``optimizer_step``. ``state_dict`` is saved in every checkpoint.
    """

    device: torch.device = torch.device("cpu")
    rank: int = 0
    world_size: int = 1
    #: True when gradients may overflow by design (fp16 loss scaling): such a step is skipped
    #: by ``optimizer_step``, so an inf gradient is not an error
    loss_scaling: bool = False

    @property
    def is_main(self) -> bool:
        """True on the process that writes files and prints."""
        return self.rank == 0

    def setup(self, model: nn.Module) -> nn.Module:
        """Place (and, for distributed strategies, wrap) the model. Called once."""
        return model.to(self.device)

    def to_device(self, batch: Any) -> Any:
        return move_to(batch, self.device)

    def autocast(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        """Context for one micro-batch's forward+backward; ``last`` is the step's final one.

        Data-parallel strategies all-reduce gradients only when ``last`` (DDP's ``no_sync``).
        """
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        """Make gradients true-scale (fp16 loss scaling); called before clipping and callbacks."""
        return None

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        optimizer.step()

    def reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum ``value`` over processes (evaluation reduces sums and counts, never means)."""
        return value

    def state_dict(self) -> dict[str, Any]:
        """Resumable state (the fp16 loss scale...); JSON-able values and tensors only."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None


class SingleDevice(Strategy):
    """One CPU or GPU. ``precision`` is "fp32", "bf16" (autocast) or "fp16" (autocast + scaler)."""

    def __init__(self, device: str | torch.device = "cpu", precision: str = "fp32") -> None:
        self.device = torch.device(device)
        self.precision = precision
        self._dtype = _DTYPES[precision]
        self._scaler = torch.amp.GradScaler(self.device.type) if precision == "fp16" else None
        self.loss_scaling = self._scaler is not None

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

    def unscale_gradients(self, optimizer: torch.optim.Optimizer) -> None:
        if self._scaler is not None:
            self._scaler.unscale_(optimizer)

    def optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self._scaler is not None:
            self._scaler.step(optimizer)  # skipped when unscaling found inf/NaN gradients
            self._scaler.update()
        else:
            optimizer.step()

    def state_dict(self) -> dict[str, Any]:
        return {"grad_scaler": self._scaler.state_dict()} if self._scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self._scaler is not None and state.get("grad_scaler"):
            self._scaler.load_state_dict(state["grad_scaler"])
