"""Strategy: where tensors live and how gradients are made, synchronised and applied.

Chosen once per run. The loop calls the methods below and never asks which strategy it has;
every method has a working single-process default here, so a strategy overrides only what it
changes. DDP and FSDP strategies live in ``bigtrain.distributed``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigtrain.core.checkpoint import load_checkpoint, load_weights, save_checkpoint, weights_copy

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
    ``clip_grad_norm`` if asked, then ``optimizer_step``; ``agree(should_stop)`` after each step
    so that every process stops together. Evaluation iterates ``shard(batches)``. Checkpoints go
    through ``save_checkpoint`` / ``load_checkpoint`` (which own the model and optimizer state,
    sharded or not) and best weights through ``full_weights`` / ``load_weights``.
    ``state_dict`` is saved in every checkpoint.
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

    def unwrap(self, model: nn.Module) -> nn.Module:
        """The model without wrappers: parameter names as in the plain model (for evaluation,
        checkpoints and reports)."""
        return model

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

    def clip_grad_norm(self, params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        """Clip the total gradient norm (over every process's shard) and return it, unclipped."""
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)

    def reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        """Sum ``value`` over processes (evaluation reduces sums and counts, never means)."""
        return value

    def agree(self, flag: bool) -> bool:
        """True on every process when ``flag`` is True on any (a stop request, a due save)."""
        return flag

    def broadcast_object(self, value: Any) -> Any:
        """The main process's ``value`` (picklable), on every process."""
        return value

    def barrier(self) -> None:
        """Wait until every process gets here."""
        return None

    def shard(self, batches: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
        """This process's share of evaluation ``batches`` as ``(batch, counted)`` pairs.

        Every batch is counted on exactly one process. A strategy whose forward is a collective
        (FSDP) yields the same number of pairs on every process, padding with uncounted ones.
        """
        for batch in batches:
            yield batch, True

    def save_checkpoint(
        self,
        path: str | Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
    ) -> Path:
        """Write model, optimizer and ``state`` (everything else) as one checkpoint folder."""
        return save_checkpoint(
            path, self.unwrap(model), {**state, "optimizer": optimizer.state_dict()}
        )

    def load_checkpoint(
        self, path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> dict[str, Any]:
        """Load what ``save_checkpoint`` wrote into model and optimizer; returns ``state``."""
        saved = load_checkpoint(path, self.unwrap(model))
        optimizer.load_state_dict(saved.pop("optimizer"))
        return saved

    def full_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """A CPU copy of every weight (tied tensors once) on the main process ({} elsewhere)."""
        return weights_copy(self.unwrap(model))

    def load_weights(self, path: str | Path, model: nn.Module) -> None:
        """Load a weights file or checkpoint folder written from ``full_weights``."""
        load_weights(path, self.unwrap(model))

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
