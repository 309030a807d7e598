"""Mixture-of-experts feed-forward layer: token-choice top-k routing (Switch / GShard style).

Each token picks its ``top_k`` experts from a softmax router. Every expert has a fixed capacity
``ceil(capacity_factor * tokens * top_k / n_experts)``; assignments beyond it are dropped (their
MoE output is zero and the residual connection carries the token). Priority is GShard's: every
token's first choice is placed before any second choice, and within one choice level earlier
tokens of the flattened (B*T) batch win.

Experts are computed together with one batched matmul over an (n_experts, capacity, C) buffer
(no Python loop over tokens or experts).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MoEConfig:
    """Mixture-of-experts settings of a transformer.

    Attributes:
        n_experts: number of experts; 0 means a dense MLP everywhere.
        top_k: experts per token.
        capacity_factor: training capacity factor; None = dropless (capacity = busiest expert).
        eval_capacity_factor: capacity factor in eval mode; None (default) = dropless, so a
            token's output never depends on the rest of the batch (needed for KV-cached
            generation to equal a full forward).
        aux_loss_coef: weight of the load-balancing loss added to the language-model loss.
        every_n_layers: layer (block) j is an MoE layer when ``(j + 1) % every_n_layers == 0``,
            so 1 = every layer, 2 = layers 1, 3, 5, ... (GShard's "every other layer").
    """

    # read by pydantic (the recipe validator), a plain dict so this file needs no pydantic
    __pydantic_config__ = {"extra": "forbid"}

    n_experts: int = 0
    top_k: int = 2
    capacity_factor: float | None = 1.25
    eval_capacity_factor: float | None = None
    aux_loss_coef: float = 0.01
    every_n_layers: int = 1

    def __post_init__(self) -> None:
        if self.n_experts < 0:
            raise ValueError(f"moe.n_experts: must be >= 0 (0 = dense), got {self.n_experts}")
        if self.n_experts and not 1 <= self.top_k <= self.n_experts:
            raise ValueError(
                f"moe.top_k: must be between 1 and n_experts={self.n_experts}, got {self.top_k}"
            )
        for name in ("capacity_factor", "eval_capacity_factor"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"moe.{name}: must be > 0 (or null for dropless), got {value}")
        if self.every_n_layers < 1:
            raise ValueError(f"moe.every_n_layers: must be >= 1, got {self.every_n_layers}")
        if self.aux_loss_coef < 0:
            raise ValueError(f"moe.aux_loss_coef: must be >= 0, got {self.aux_loss_coef}")

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> MoEConfig:
        """Build from a mapping; unknown keys and non-numbers raise a one-line ValueError."""
        names = [f.name for f in fields(cls)]
        for key, value in values.items():
            if key not in names:
                close = difflib.get_close_matches(str(key), names, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise ValueError(f"moe.{key}: unknown key{hint}; accepted: {', '.join(names)}")
            whole = key in ("n_experts", "top_k", "every_n_layers")
            nullable = key.endswith("capacity_factor")
            ok = isinstance(value, int) or (isinstance(value, float) and not whole)
            if isinstance(value, bool) or not (ok or (value is None and nullable)):
                kind = "an integer" if whole else "a number" + (" or null" if nullable else "")
                raise ValueError(f"moe.{key}: expected {kind}, got {value!r}")
        return cls(**values)


def load_balancing_loss(router_probs: torch.Tensor, expert_index: torch.Tensor) -> torch.Tensor:
    """Switch Transformer load-balancing loss (Fedus et al. 2021, eq. 4).

    ``n_experts * sum_i f_i * P_i`` with ``f_i`` the fraction of the N*k routing assignments
    (all k choices, before capacity dropping) that go to expert i and ``P_i`` the mean router
    probability of expert i. Both sum to one, so perfectly uniform routing gives exactly 1.0.

    Args:
        router_probs: (N, n_experts) softmax router probabilities.
        expert_index: (N, k) experts chosen per token.
    """
    n_experts = router_probs.shape[-1]
    counts = torch.bincount(expert_index.reshape(-1), minlength=n_experts)
    return _aux_loss(router_probs, counts, expert_index.numel())


def _aux_loss(probs: torch.Tensor, counts: torch.Tensor, n_assign: int) -> torch.Tensor:
    f = counts.to(probs.dtype) / n_assign  # (E,) fraction of assignments, no gradient
    return probs.shape[-1] * (f * probs.mean(0)).sum()


class MoEMLP(nn.Module):
    """Top-k routed mixture of GELU MLP experts; ``forward(x) -> (y, aux_loss)``.

    Combine weights are the top-k router probabilities renormalised to sum to one. With
    ``top_k == 1`` the raw probability is used instead (as in Switch), because renormalising a
    single probability gives 1 and the router would get no gradient from the task loss.

    After each forward, ``last_expert_counts`` (n_experts,) holds the routing assignments per
    expert (before capacity dropping) and ``last_dropped_fraction`` the share of assignments
    dropped; both are detached and meant for logging.
    """

    def __init__(
        self,
        n_embd: int,
        n_experts: int,
        top_k: int = 2,
        capacity_factor: float | None = 1.25,
        hidden: int | None = None,
        dropout: float = 0.0,
        *,
        bias: bool = False,
        eval_capacity_factor: float | None = None,
    ) -> None:
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k={top_k} must be between 1 and n_experts={n_experts}")
        hidden = hidden or 4 * n_embd
        self.n_experts, self.top_k = n_experts, top_k
        self.capacity_factor, self.eval_capacity_factor = capacity_factor, eval_capacity_factor
        self.router = nn.Linear(n_embd, n_experts, bias=False)
        self.w_fc = nn.Parameter(torch.empty(n_experts, n_embd, hidden))
        self.b_fc = nn.Parameter(torch.zeros(n_experts, 1, hidden)) if bias else None
        self.w_proj = nn.Parameter(torch.empty(n_experts, hidden, n_embd))
        self.b_proj = nn.Parameter(torch.zeros(n_experts, 1, n_embd)) if bias else None
        self.dropout = nn.Dropout(dropout)
        self.last_expert_counts: torch.Tensor | None = None
        self.last_dropped_fraction: torch.Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02, proj_std: float | None = None) -> None:
        """Normal(0, std) router and expert weights (proj_std for the output side), zero biases."""
        nn.init.normal_(self.router.weight, 0.0, std)
        nn.init.normal_(self.w_fc, 0.0, std)
        nn.init.normal_(self.w_proj, 0.0, std if proj_std is None else proj_std)
        for b in (self.b_fc, self.b_proj):
            if b is not None:
                nn.init.zeros_(b)

    def expert_parameters(self) -> int:
        """Number of parameters inside the experts (router excluded)."""
        return sum(
            p.numel() for p in (self.w_fc, self.b_fc, self.w_proj, self.b_proj) if p is not None
        )

    def capacity(self, n_tokens: int) -> int | None:
        """Slots per expert for ``n_tokens`` tokens in the current mode; None = dropless."""
        cf = self.capacity_factor if self.training else self.eval_capacity_factor
        if cf is None:
            return None
        return math.ceil(cf * n_tokens * self.top_k / self.n_experts)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Route ``x`` (..., C) through the experts; returns (y like x, scalar aux loss)."""
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # (N, C)
        n, e, k = x.shape[0], self.n_experts, self.top_k
        probs = self.router(x).float().softmax(dim=-1)  # (N, E), float32 like Switch's router
        top_p, top_i = probs.topk(k, dim=-1)  # (N, k)
        gates = top_p / top_p.sum(dim=-1, keepdim=True) if k > 1 else top_p

        # Assignments in priority order: all first choices, then all second choices, ...
        expert = top_i.t().reshape(-1)  # (kN,)
        onehot = F.one_hot(expert, e)  # (kN, E)
        counts = onehot.sum(0)  # (E,)
        aux = _aux_loss(probs, counts, n * k)
        pos = onehot.cumsum(0).gather(1, expert[:, None]).squeeze(1) - 1  # place in its queue
        cap = self.capacity(n)
        if cap is None:
            cap = max(int(counts.max()), 1)  # dropless: one host sync for the buffer size
        keep = pos < cap  # (kN,)
        slot = expert * cap + pos  # (kN,) row in the flat (E * cap) expert buffer

        # Which token fills each slot. Dropped assignments all write to a spare last slot;
        # empty slots keep token 0, whose result there is computed but never read back.
        token = torch.arange(n, device=x.device).repeat(k)  # (kN,)
        slot_token = torch.zeros(e * cap + 1, dtype=torch.long, device=x.device)
        slot_token.scatter_(0, torch.where(keep, slot, e * cap), token)
        h = x[slot_token[:-1]].view(e, cap, -1)  # (E, cap, C)
        h = torch.bmm(h, self.w_fc) if self.b_fc is None else torch.baddbmm(self.b_fc, h, self.w_fc)
        h = F.gelu(h)  # (E, cap, H)
        out = (
            torch.bmm(h, self.w_proj)
            if self.b_proj is None
            else torch.baddbmm(self.b_proj, h, self.w_proj)
        )
        out = out.view(e * cap, -1)  # (E*cap, C)

        weight = (gates.t().reshape(-1) * keep).to(x.dtype)  # (kN,), zero for dropped
        y = out[torch.where(keep, slot, 0)] * weight[:, None]  # (kN, C)
        y = y.view(k, n, -1).sum(0)  # (N, C)
        self.last_expert_counts = counts.detach()
        self.last_dropped_fraction = 1.0 - keep.float().mean().detach()
        return self.dropout(y).view(shape), aux
