"""HealthCheck: stop on a non-finite loss; name vanishing or exploding gradients per layer."""

from __future__ import annotations

import math
import sys

import torch

from bigtrain.core.callback import Callback
from bigtrain.core.state import TrainState
from bigtrain.errors import TrainingError


def _full(norm: torch.Tensor) -> torch.Tensor:
    """A sharded (FSDP) gradient's norm is partial on each process: ``full_tensor`` reduces it.
    DTensor's module is read only when loaded (importing it costs ~1.5 s)."""
    tensor_module = sys.modules.get("torch.distributed.tensor")
    if tensor_module is not None and isinstance(norm, tensor_module.DTensor):
        return norm.full_tensor()
    return norm


class HealthCheck(Callback):
    """Runs after backward, before the optimizer step, so a NaN never reaches the weights.

    Every step: the loss must be finite (one scalar sync). Every ``check_every`` steps: per-layer
    gradient norms (one foreach kernel), shared in ``state.grad_norms`` for the logger; layers
    whose gradient norm is below ``vanishing_below`` or above ``exploding_above`` are named in
    ``state.health_messages`` (each layer is reported once) and printed by ``report``.
    """

    def __init__(
        self,
        check_every: int = 50,
        vanishing_below: float = 1e-7,
        exploding_above: float = 1e3,
        report=print,
    ) -> None:
        self.check_every = check_every
        self.vanishing_below = vanishing_below
        self.exploding_above = exploding_above
        self.report = report
        self.warned: set[str] = set()
        self.messages: list[str] = []

    def on_setup(self, state: TrainState) -> None:
        model = state.trainer.strategy.unwrap(state.model)  # names without "module."
        self.named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]

    def on_after_backward(self, state: TrainState) -> None:
        loss = state.loss.item()  # ~0.2 us on CPU; torch.isfinite would launch a kernel
        # every process stops at the same step, whichever one saw the bad loss
        if state.trainer.strategy.agree(not math.isfinite(loss)):
            seen = (
                f"loss became {loss}"
                if not math.isfinite(loss)
                else "the loss became non-finite on another process"
            )
            raise TrainingError(
                f"{seen} at step {state.step}: training stopped before "
                "the bad update; lower optim.lr, set trainer.clip_grad_norm, or check the data"
            )
        if self.check_every and state.step % self.check_every == 0:
            self.inspect(state)

    def inspect(self, state: TrainState) -> None:
        with_grad = [(n, p.grad) for n, p in self.named if p.grad is not None]
        if not with_grad:
            return
        # a sparse gradient (embedding tables with sparse=True) is measured by its rows' values
        dense = [
            g.detach().coalesce().values() if g.is_sparse else g.detach() for _, g in with_grad
        ]
        norms = torch._foreach_norm([g.float() for g in dense])
        norms = [_full(n) for n in norms]
        values = torch.stack(norms).tolist()
        if state.trainer.strategy.loss_scaling and not all(map(math.isfinite, values)):
            return  # fp16 overflow: the loss scaler skips this step and lowers its scale
        state.grad_norms = {n: v for (n, _), v in zip(with_grad, values)}
        messages = []
        for (name, _), v in zip(with_grad, values):
            if not math.isfinite(v):
                raise TrainingError(
                    f"gradient of {name} is {v} at step {state.step}: lower optim.lr or set "
                    "trainer.clip_grad_norm"
                )
            kind = None
            if v < self.vanishing_below and name.endswith("weight"):
                kind = f"vanishing gradient: {name} has gradient norm {v:.2e} < {self.vanishing_below:g}"
            elif v > self.exploding_above:
                kind = f"exploding gradient: {name} has gradient norm {v:.2e} > {self.exploding_above:g}"
            if kind and name not in self.warned:
                self.warned.add(name)
                messages.append(f"step {state.step}: {kind}")
        if messages:
            self.messages.extend(messages)
            state.health_messages.extend(messages)
            for m in messages:
                self.report(f"warning: {m}")

    def state_dict(self) -> dict:
        return {"warned": sorted(self.warned), "messages": self.messages}

    def load_state_dict(self, state: dict) -> None:
        self.warned = set(state.get("warned", []))
        self.messages = list(state.get("messages", []))
