"""Transformer encoder for sequence classification (bidirectional, padding-aware).

Builder mapping: ``EncoderClassifier.from_config(cfg, (block_size,), num_classes)``; the
vocabulary size is not implied by the task, so ``vocab_size`` must be set in the config.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.models.gpt import MLP

__all__ = ["EncoderClassifier", "EncoderClassifierConfig"]


@dataclass
class EncoderClassifierConfig:
    """Encoder classifier settings.

    Attributes:
        n_layer, n_head, n_embd: depth, heads, width.
        block_size: longest input, from ``input_shape[0]``.
        vocab_size: tokenizer vocabulary size (required).
        dropout: embedding, attention, residual and head dropout.
        pooling: "mean" over non-pad tokens, or "cls": a learned [CLS] vector is prepended and
            its final state is classified.
        pad_id: padding token id, masked out of attention and pooling; None = no padding.
        mlp_ratio: MLP hidden size = mlp_ratio * n_embd.
        bias: biases in Linear and LayerNorm layers.
    """

    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 128
    vocab_size: int | None = None
    dropout: float = 0.1
    pooling: str = "mean"
    pad_id: int | None = 0
    mlp_ratio: float = 4
    bias: bool = True

    def __post_init__(self) -> None:
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"pooling: must be 'mean' or 'cls', got '{self.pooling}'")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd: {self.n_embd} is not divisible by n_head={self.n_head}")


class SelfAttention(nn.Module):
    """Bidirectional multi-head attention with an optional key mask (True = attend)."""

    def __init__(self, cfg: EncoderClassifierConfig) -> None:
        super().__init__()
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.resid_dropout = nn.Dropout(cfg.dropout)
        # n_head * head_dim is the attention's inner width: n_embd until heads are pruned away
        self.n_head, self.n_embd, self.dropout = cfg.n_head, cfg.n_embd, cfg.dropout
        self.head_dim = cfg.n_embd // cfg.n_head

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)  # (B, nh, T, hd)
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        y = y.transpose(1, 2).contiguous().view(B, T, self.n_head * self.head_dim)  # (B, T, C)
        return self.resid_dropout(self.c_proj(y))


class EncoderBlock(nn.Module):
    """Pre-LayerNorm bidirectional block."""

    def __init__(self, cfg: EncoderClassifierConfig) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = SelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg.n_embd, int(cfg.mlp_ratio * cfg.n_embd), cfg.dropout, cfg.bias)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


class EncoderClassifier(nn.Module):
    """Token + learned position embeddings -> encoder blocks -> pooling -> Linear.

    ``forward(idx (B, T)) -> logits (B, num_classes)``. Pad tokens are masked as attention keys
    and left out of mean pooling, so appending padding does not change the logits (eval mode).
    """

    Config = EncoderClassifierConfig

    def __init__(self, config: EncoderClassifierConfig, num_classes: int) -> None:
        super().__init__()
        if config.vocab_size is None:
            raise ValueError("vocab_size: must be set (the tokenizer's vocabulary size)")
        self.config = cfg = config
        n_pos = cfg.block_size + (1 if cfg.pooling == "cls" else 0)
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(n_pos, cfg.n_embd)
        self.cls_token = (
            nn.Parameter(torch.zeros(1, 1, cfg.n_embd)) if cfg.pooling == "cls" else None
        )
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(EncoderBlock(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.head = nn.Linear(cfg.n_embd, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, 0.0, 0.02)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, 0.0, 0.02)

    @classmethod
    def from_config(
        cls,
        cfg: EncoderClassifierConfig | dict | None,
        input_shape: tuple[int, ...],
        num_outputs: int,
    ) -> EncoderClassifier:
        """``input_shape = (block_size,)``, ``num_outputs`` = number of classes."""
        if isinstance(cfg, dict):
            cfg = EncoderClassifierConfig(**cfg)
        cfg = cfg or EncoderClassifierConfig()
        return cls(replace(cfg, block_size=int(input_shape[0])), num_outputs)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        B, T = idx.shape
        if T > cfg.block_size:
            raise ValueError(
                f"sequence of {T} tokens is longer than the encoder's block_size={cfg.block_size}"
            )
        x = self.wte(idx)  # (B, T, C)
        keep = None if cfg.pad_id is None else idx != cfg.pad_id  # (B, T) True = real token
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(B, -1, -1), x), dim=1)  # (B, 1 + T, C)
            if keep is not None:
                keep = F.pad(keep, (1, 0), value=True)
        x = self.drop(x + self.wpe.weight[: x.shape[1]])
        mask = None
        if keep is not None:
            # a row of padding only would mask every key (NaN); let it attend everywhere
            attend = keep | ~keep.any(dim=1, keepdim=True)
            mask = attend[:, None, None, :]  # (B, 1, 1, T) broadcast over heads and queries
        for block in self.blocks:
            x = block(x, mask)
        x = self.ln_f(x)
        if self.cls_token is not None:
            pooled = x[:, 0]  # (B, C)
        elif keep is None:
            pooled = x.mean(dim=1)
        else:
            w = keep.to(x.dtype)[:, :, None]  # (B, T, 1)
            pooled = (x * w).sum(1) / w.sum(1).clamp(min=1.0)
        return self.head(self.drop(pooled))
