"""Muon for hidden weight matrices with an AdamW partner for everything else.

Muon (Keller Jordan, 2024; the modded-nanogpt speedrun's optimizer) keeps SGD-Nesterov momentum
and replaces each 2-D update by its orthogonalised version (a quintic Newton-Schulz iteration,
bf16, 5 steps). It is meant for the matrices inside the network: embeddings, the output head and
1-D gains and biases go to AdamW, as in the speedrun. The Muon half is ``torch.optim.Muon``
itself (same update as Keller's reference ``muon.py``: ``buf.lerp_(g, 1 - mu)``, Nesterov
``g.lerp(buf, mu)``, coefficients (3.4445, -4.775, 2.0315), lr scaled by
``sqrt(max(1, rows / cols))``, decoupled weight decay); the AdamW half is ``torch.optim.AdamW``.

One difference, by hardware: ``torch.optim.Muon`` always iterates in bf16, which a CPU without
AVX512-BF16/AMX emulates at ~1 GFLOP/s (150x slower than its fp32 matmuls; a 3x144 GPT's step
went from 58 ms to seconds). There :class:`Fp32Muon` runs the same update with the iteration in
fp32; its state dict is torch's, so checkpoints move between the two.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from bigtrain.core.hardware import native_bf16
from bigtrain.errors import ConfigError

MUON_DEFAULTS = {"momentum": 0.95, "nesterov": True}
ADAM_BETAS = (0.9, 0.95)  # the speedrun's AdamW betas


def output_layer_weights(model: nn.Module) -> set[int]:
    """ids of the weights that produce the model's outputs or look tokens up.

    The last ``nn.Linear`` registered is taken as the output head (``lm_head`` in a GPT, the
    classifier of an MLP), and every ``nn.Embedding`` table is a lookup, not a transform; a head
    tied to an embedding is both.
    """
    ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linears:
        ids.add(id(linears[-1].weight))
    return ids


def muon_param_groups(
    model: nn.Module, weight_decay: float, lr: float, adam_lr: float | None
) -> list[dict[str, Any]]:
    """Groups for :class:`MuonWithAdamW`: hidden 2-D matrices (Muon, decayed) first, then the
    AdamW groups: embeddings and head (decayed) and 1-D/other tensors (not decayed).

    AdamW groups run at ``adam_lr`` (default: ``lr``) through their ``lr_scale``, so LR
    schedules scale both halves together.
    """
    excluded = output_layer_weights(model)
    hidden, adam_matrices, adam_other = [], [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim == 2 and id(p) not in excluded:
            hidden.append(p)
        elif p.ndim >= 2:
            adam_matrices.append(p)
        else:
            adam_other.append(p)
    scale = (adam_lr if adam_lr is not None else lr) / lr
    groups = [
        {"name": "muon", "params": hidden, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"name": "adam_decay", "params": adam_matrices, "weight_decay": weight_decay},
        {"name": "adam_no_decay", "params": adam_other, "weight_decay": 0.0},
    ]
    for g in groups[1:]:
        g["lr_scale"] = scale
    return [g for g in groups if g["params"]]


def _refuse_sharded(groups: list[dict[str, Any]]) -> None:
    """Muon orthogonalises whole matrices: a shard of one (FSDP's DTensor) is not enough."""
    if not torch.distributed.is_available():
        return
    from torch.distributed.tensor import DTensor

    if any(isinstance(p, DTensor) for g in groups for p in g["params"]):
        raise ConfigError(
            "optim.name muon needs whole weight matrices on every process; it does not run on "
            "FSDP-sharded parameters yet: use distributed.strategy=ddp"
        )


def newton_schulz(
    g: torch.Tensor,
    coefficients: tuple[float, float, float],
    steps: int,
    eps: float,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``torch.optim._muon._zeropower_via_newtonschulz`` (Keller's quintic iteration) in
    ``dtype`` instead of bf16, on one matrix (r, c) or a stack of same-shaped ones (n, r, c)."""
    a, b, c = coefficients
    x = g.to(dtype) if g.ndim == 3 else g.to(dtype).unsqueeze(0)
    tall = g.size(-2) > g.size(-1)
    if tall:
        x = x.mT
    x = x / x.norm(dim=(-2, -1), keepdim=True).clamp(min=eps)  # spectral norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = torch.baddbmm(x, torch.baddbmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    x = x.mT if tall else x
    return x if g.ndim == 3 else x.squeeze(0)


def _loss_of(closure) -> Any:
    """The optimizer-closure convention: re-evaluate the loss with gradients on, if asked."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class Fp32Muon(torch.optim.Muon):
    """``torch.optim.Muon`` with the Newton-Schulz iteration in fp32 (for hardware without native
    bf16); the momentum, Nesterov, LR adjustment and weight decay are torch's, line for line.

    Matrices of one shape (a transposed one counts: its iteration runs on the wide side) are
    orthogonalised as one batch: a 3-layer GPT's 12 small iterations become 3 batched ones.
    """

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        from torch.optim._muon import _adjust_lr  # torch's own LR scaling, not a copy

        loss = _loss_of(closure)
        for group in self.param_groups:
            params: list[torch.Tensor] = []
            grads: list[torch.Tensor] = []
            bufs: list[torch.Tensor] = []
            self._init_group(group, params, grads, bufs)
            lr, mu, wd = group["lr"], group["momentum"], group["weight_decay"]
            wide: dict[tuple[int, int], list[tuple[torch.Tensor, torch.Tensor, bool]]] = {}
            for p, g, buf in zip(params, grads, bufs):
                buf.lerp_(g, 1 - mu)
                update = g.lerp(buf, mu) if group["nesterov"] else buf
                tall = update.size(0) > update.size(1)
                u = update.T if tall else update
                wide.setdefault(tuple(u.shape), []).append((p, u, tall))
            for same in wide.values():
                ortho = newton_schulz(
                    torch.stack([u for _, u, _ in same]),
                    group["ns_coefficients"], group["ns_steps"], group["eps"],
                )  # fmt: skip
                for (p, _, tall), o in zip(same, ortho):
                    p.mul_(1 - lr * wd)
                    step = (o.T if tall else o).to(p.dtype)
                    p.add_(step, alpha=-_adjust_lr(lr, group["adjust_lr_fn"], p.shape))
        return loss


class MuonWithAdamW(torch.optim.Optimizer):
    """One optimizer object over both halves: ``torch.optim.Muon`` steps the groups named
    ``muon``, ``torch.optim.AdamW`` the others.

    The halves share their group dicts with this optimizer, so the loop's per-group LR updates
    and ``zero_grad`` reach them; the state dict holds both halves' states.
    """

    def __init__(
        self,
        groups: list[dict[str, Any]],
        lr: float,
        weight_decay: float,
        momentum: float = MUON_DEFAULTS["momentum"],
        nesterov: bool = MUON_DEFAULTS["nesterov"],
        betas: tuple[float, float] = ADAM_BETAS,
        eps: float = 1e-8,
        adam_impl: dict[str, Any] | None = None,
    ) -> None:
        _refuse_sharded(groups)
        muon = [g for g in groups if g.get("name") == "muon"]
        adam = [g for g in groups if g.get("name") != "muon"]
        for g in groups:  # the loop sets lr = schedule * lr_scale before each step
            g.setdefault("lr", lr * g.get("lr_scale", 1.0))
        # torch's Muon where bf16 is native (it always iterates in bf16), Fp32Muon elsewhere
        bf16 = bool(muon) and native_bf16(muon[0]["params"][0].device)
        self.muon = (torch.optim.Muon if bf16 else Fp32Muon)(
            muon, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov
        ) if muon else None  # fmt: skip
        self.adam = torch.optim.AdamW(
            adam, lr=lr, weight_decay=weight_decay, betas=betas, eps=eps,
            **(adam_impl or {"foreach": True}),
        ) if adam else None  # fmt: skip
        parts = [o for o in (self.muon, self.adam) if o is not None]
        super().__init__([{"params": []}], {"lr": lr})
        self.param_groups = [g for o in parts for g in o.param_groups]
        self._parts = parts

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = _loss_of(closure)
        for part in self._parts:
            part.step()
        return loss

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {
            "muon": self.muon.state_dict() if self.muon else None,
            "adam": self.adam.state_dict() if self.adam else None,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        for name in ("muon", "adam"):
            part = getattr(self, name)
            if (part is None) != (state_dict.get(name) is None):
                raise ValueError(f"the saved optimizer state has no matching '{name}' half")
            if part is not None:
                part.load_state_dict(state_dict[name])
        # load_state_dict replaces the halves' group dicts: share the new ones again
        self.param_groups = [g for o in self._parts for g in o.param_groups]
