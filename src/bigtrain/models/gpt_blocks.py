"""GPT's building blocks: attention, the MLP variants and the pre-norm block.

The architecture switches of ``GPTConfig`` act here: ``norm`` (LayerNorm or RMSNorm), ``mlp``
(GELU, ReLU² or SwiGLU), ``qk_norm`` (RMSNorm of queries and keys per head, before RoPE).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.models.moe import MoEMLP

if TYPE_CHECKING:
    from bigtrain.models.gpt import GPTConfig


def make_norm(cfg: GPTConfig, dim: int | None = None) -> nn.Module:
    """The block's normalisation layer: LayerNorm (nanoGPT) or RMSNorm (Llama, the speedrun)."""
    dim = cfg.n_embd if dim is None else dim
    if cfg.norm == "rmsnorm":
        return nn.RMSNorm(dim, eps=1e-6)
    return nn.LayerNorm(dim, bias=cfg.bias)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate (..., T, hd) by RoPE angles (T, hd/2); dims i and i + hd/2 form a pair (NeoX)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention with one fused qkv projection and SDPA."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        # n_head * head_dim is the attention's inner width: n_embd until heads are pruned away
        self.n_head, self.n_embd, self.dropout = cfg.n_head, cfg.n_embd, cfg.dropout
        self.head_dim = cfg.n_embd // cfg.n_head
        if cfg.qk_norm:  # one gain per head dimension, shared by the heads
            self.q_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
            self.k_norm = nn.RMSNorm(self.head_dim, eps=1e-6)
        self.qk_norm = cfg.qk_norm

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor | None = None,
        sin: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        start: int = 0,
    ) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        if cos is not None:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if kv is None:
            p = self.dropout if self.training else 0.0
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        else:
            end = start + T
            nh = self.n_head  # the cache has the config's heads; a pruned layer uses fewer
            kv[0][:, :nh, start:end] = k
            kv[1][:, :nh, start:end] = v
            k, v = kv[0][:, :nh, :end], kv[1][:, :nh, :end]  # (B, nh, end, hd) cached prefix
            if start == 0:  # prefill: plain causal attention
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            elif T == 1:  # decode: the new token sees every cached position
                y = F.scaled_dot_product_attention(q, k, v)
            else:  # a chunk after a prefix: query i sees keys up to start + i
                mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(start)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    """Linear -> activation -> Linear -> dropout; ``kind`` is gelu, relu2 (ReLU squared) or
    swiglu (``c_fc`` makes both halves: ``silu(a) * b``)."""

    def __init__(
        self,
        n_embd: int,
        hidden: int,
        dropout: float = 0.0,
        bias: bool = False,
        kind: str = "gelu",
    ) -> None:
        super().__init__()
        self.kind = kind
        self.c_fc = nn.Linear(n_embd, 2 * hidden if kind == "swiglu" else hidden, bias=bias)
        self.c_proj = nn.Linear(hidden, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.c_fc(x)  # (B, T, hidden) or (B, T, 2 * hidden)
        if self.kind == "relu2":
            h = F.relu(h).square()
        elif self.kind == "swiglu":
            a, b = h.chunk(2, dim=-1)
            h = F.silu(a) * b
        else:
            h = F.gelu(h)
        return self.dropout(self.c_proj(h))


class Block(nn.Module):
    """Pre-norm block; ``forward`` returns (x, MoE aux loss or None)."""

    def __init__(self, cfg: GPTConfig, moe: bool = False) -> None:
        super().__init__()
        hidden = int(cfg.mlp_ratio * cfg.n_embd)
        self.ln_1 = make_norm(cfg)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = make_norm(cfg)
        self.is_moe = moe
        if moe:
            m = cfg.moe
            self.mlp = MoEMLP(
                cfg.n_embd,
                m.n_experts,
                m.top_k,
                m.capacity_factor,
                hidden,
                cfg.dropout,
                bias=cfg.bias,
                eval_capacity_factor=m.eval_capacity_factor,
            )
        else:
            self.mlp = MLP(cfg.n_embd, hidden, cfg.dropout, cfg.bias, kind=cfg.mlp)

    def forward(
        self,
        x: torch.Tensor,
        cos: torch.Tensor | None = None,
        sin: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
        start: int = 0,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = x + self.attn(self.ln_1(x), cos, sin, kv, start)
        if self.is_moe:
            y, aux = self.mlp(self.ln_2(x))
            return x + y, aux
        return x + self.mlp(self.ln_2(x)), None
