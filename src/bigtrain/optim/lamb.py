"""LAMB (You et al. 2019, "Large Batch Optimization for Deep Learning: Training BERT in 76 min").

Per parameter tensor ``w`` at step ``t``::

    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g^2
    r = (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
    u = r + wd * w                                   # decoupled weight decay
    trust = ||w|| / ||u||  (1 when either norm is 0)
    w = w - lr * trust * u
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch


class Lamb(torch.optim.Optimizer):
    """Adam direction scaled per tensor by the trust ratio ``||w|| / ||update||``."""

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0.0:
            raise ValueError(f"Lamb: lr must be > 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lamb: betas must be in [0, 1), got {betas}")
        if eps <= 0.0 or weight_decay < 0.0:
            raise ValueError(f"Lamb: need eps > 0 and weight_decay >= 0, got {eps}, {weight_decay}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One update of every parameter that has a gradient."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("Lamb does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                params.append(p)
                grads.append(p.grad)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            if not params:
                continue
            beta1, beta2 = group["betas"]
            torch._foreach_mul_(exp_avgs, beta1)
            torch._foreach_add_(exp_avgs, grads, alpha=1.0 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, value=1.0 - beta2)

            # r = m_hat / (sqrt(v_hat) + eps), with per-tensor bias corrections
            denom = torch._foreach_div(exp_avg_sqs, [1.0 - beta2**t for t in steps])
            torch._foreach_sqrt_(denom)
            torch._foreach_add_(denom, group["eps"])
            update = torch._foreach_div(exp_avgs, [1.0 - beta1**t for t in steps])
            torch._foreach_div_(update, denom)
            if group["weight_decay"] != 0.0:
                torch._foreach_add_(update, params, alpha=group["weight_decay"])

            # trust ratio stays a tensor per parameter: no host sync on accelerators
            w_norms = torch._foreach_norm(params)
            u_norms = torch._foreach_norm(update)
            trust = [
                torch.where((wn > 0) & (un > 0), wn / un, torch.ones_like(wn))
                for wn, un in zip(w_norms, u_norms)
            ]
            torch._foreach_mul_(update, trust)
            torch._foreach_add_(params, update, alpha=-group["lr"])
        return loss
