"""GPT: a nanoGPT-style pre-LayerNorm decoder-only transformer.

Options: learned or rotary positions, weight tying, cross-layer block sharing, mixture-of-experts
MLPs, activation checkpointing and a preallocated KV cache for O(T) generation per new token.
Module and parameter names follow nanoGPT's model.py (``transformer.h.0.attn.c_attn.weight``).

Builder mapping: ``GPT.from_config(cfg, input_shape=(block_size,), num_outputs=vocab_size)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from bigtrain.models.gpt_blocks import MLP, Block, CausalSelfAttention, apply_rotary, make_norm
from bigtrain.models.moe import MoEConfig, MoEMLP

NORMS = ("layernorm", "rmsnorm")
MLPS = ("gelu", "relu2", "swiglu")

__all__ = [
    "GPT",
    "Block",
    "CausalSelfAttention",
    "GPTConfig",
    "KVCache",
    "LMOutput",
    "MLP",
    "MoEConfig",
    "apply_rotary",
]


class LMOutput(NamedTuple):
    """What a language model's ``forward(idx, targets)`` returns (GPT and RNNLM alike).

    ``loss`` is what training minimises: ``cross_entropy + moe.aux_loss_coef * aux_loss``
    (just the cross-entropy without MoE layers); ``cross_entropy`` is the data loss that
    evaluation reports. Both are None without targets. ``aux_loss`` (the MoE load-balancing
    loss averaged over MoE layers, unscaled) and ``expert_counts`` (routing assignments per
    expert summed over MoE layers) are None for dense models.
    """

    logits: torch.Tensor  # (B, T, vocab)
    loss: torch.Tensor | None = None
    cross_entropy: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    expert_counts: torch.Tensor | None = None


@dataclass
class GPTConfig:
    """GPT hyperparameters.

    Attributes:
        n_layer, n_head, n_embd: depth, attention heads, width.
        block_size: longest context; ``from_config`` takes it from ``input_shape[0]``.
        vocab_size: filled from ``num_outputs`` by ``from_config``; a larger value set here is
            kept (nanoGPT pads 50257 to 50304 for speed).
        dropout: embedding, attention and residual dropout.
        bias: biases in Linear and LayerNorm layers.
        position: "learned" (absolute embeddings) or "rotary" (RoPE on q and k).
        tie_weights: share the token embedding with the output head.
        mlp_ratio: MLP hidden size = mlp_ratio * n_embd.
        n_unique_blocks: None = every layer has its own block. Otherwise the n_layer layers share
            n_unique_blocks blocks in contiguous groups: layer i uses block
            ``i * n_unique_blocks // n_layer`` (4 layers, 2 blocks -> 0, 0, 1, 1).
        moe: mixture-of-experts settings, a MoEConfig or a mapping of its keys
            (``n_experts = 0`` means dense); always a MoEConfig after construction.
        activation_checkpointing: recompute each block in backward (training only).
        rope_base: RoPE frequency base.
        norm: "layernorm" (nanoGPT) or "rmsnorm" (Llama; the modded-nanogpt speedrun).
        mlp: "gelu" (nanoGPT), "relu2" (ReLU squared, the speedrun) or "swiglu" (Llama: two
            input projections of mlp_ratio * n_embd, ``silu(a) * b``, so 1.5x the MLP weights).
        qk_norm: RMSNorm queries and keys per head before attention (the speedrun, OLMo 2).
        logit_softcap: None, or c > 0 to squash logits to ``c * tanh(logits / c)`` (Gemma 2,
            the speedrun's 30 / 15).
        zero_init_proj: start every residual output projection (attention and MLP ``c_proj``)
            at zero, so each block begins as the identity (the speedrun).
    """

    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 128
    block_size: int = 64
    vocab_size: int | None = None
    dropout: float = 0.0
    bias: bool = False
    position: str = "learned"
    tie_weights: bool = True
    mlp_ratio: float = 4
    n_unique_blocks: int | None = None
    # a mapping is accepted (and converted in __post_init__) so that recipe errors inside it
    # surface as "moe.<key>: ..." rather than one opaque validation error for the whole block
    moe: MoEConfig | dict[str, Any] = field(default_factory=MoEConfig)
    activation_checkpointing: bool = False
    rope_base: float = 10000.0
    norm: str = "layernorm"
    mlp: str = "gelu"
    qk_norm: bool = False
    logit_softcap: float | None = None
    zero_init_proj: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.moe, dict):
            self.moe = MoEConfig.from_dict(self.moe)
        for name in ("n_layer", "n_head", "n_embd", "block_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: must be >= 1, got {getattr(self, name)}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd: {self.n_embd} is not divisible by n_head={self.n_head}")
        if self.position not in ("learned", "rotary"):
            raise ValueError(f"position: must be 'learned' or 'rotary', got '{self.position}'")
        if self.position == "rotary" and (self.n_embd // self.n_head) % 2:
            raise ValueError(
                f"position: rotary needs an even head size n_embd/n_head, got "
                f"{self.n_embd // self.n_head}"
            )
        if self.n_unique_blocks is not None and not 1 <= self.n_unique_blocks <= self.n_layer:
            raise ValueError(
                f"n_unique_blocks: must be between 1 and n_layer={self.n_layer} (or null for no "
                f"sharing), got {self.n_unique_blocks}"
            )
        for name, allowed in (("norm", NORMS), ("mlp", MLPS)):
            if getattr(self, name) not in allowed:
                raise ValueError(
                    f"{name}: must be one of {', '.join(allowed)}, got '{getattr(self, name)}'"
                )
        if self.logit_softcap is not None and self.logit_softcap <= 0:
            raise ValueError(f"logit_softcap: must be > 0 (or null), got {self.logit_softcap}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: must be in [0, 1), got {self.dropout}")
        n_blocks = self.n_unique_blocks or self.n_layer
        if self.moe.n_experts and self.moe.every_n_layers > n_blocks:
            raise ValueError(
                f"moe.every_n_layers: {self.moe.every_n_layers} exceeds the {n_blocks} blocks, "
                "so no layer would be an MoE layer"
            )


@dataclass
class KVCache:
    """Preallocated keys and values of every layer, each (n_layer, B, n_head, max_len, head_dim).

    ``pos`` is the number of positions already cached; ``GPT.forward`` advances it. Set it back
    (or call ``reset``) to reuse the buffers for a new prompt.
    """

    k: torch.Tensor
    v: torch.Tensor
    pos: int = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    def reset(self) -> None:
        self.pos = 0


class GPT(nn.Module):
    """Decoder-only language model; ``forward(idx, targets=None, kv_cache=None) -> LMOutput``."""

    Config = GPTConfig

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        if config.vocab_size is None or config.vocab_size < 1:
            raise ValueError(
                "vocab_size: not set; build with GPT.from_config(cfg, (block_size,), vocab_size)"
            )
        self.config = cfg = config
        n_blocks = cfg.n_unique_blocks or cfg.n_layer
        every = cfg.moe.every_n_layers
        modules: dict[str, nn.Module] = {"wte": nn.Embedding(cfg.vocab_size, cfg.n_embd)}
        if cfg.position == "learned":
            modules["wpe"] = nn.Embedding(cfg.block_size, cfg.n_embd)
        modules["drop"] = nn.Dropout(cfg.dropout)
        modules["h"] = nn.ModuleList(
            Block(cfg, moe=cfg.moe.n_experts > 0 and (j + 1) % every == 0) for j in range(n_blocks)
        )
        modules["ln_f"] = make_norm(cfg)
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        if cfg.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        # layer -> block index when blocks are shared (contiguous groups); None = identity
        self._layer_map = (
            None
            if n_blocks == cfg.n_layer
            else tuple(i * n_blocks // cfg.n_layer for i in range(cfg.n_layer))
        )
        if cfg.position == "rotary":  # filled by reset_parameters; rebuilt, never saved
            self.register_buffer("rope_cos", None, persistent=False)
            self.register_buffer("rope_sin", None, persistent=False)
        self.reset_parameters()

    @classmethod
    def from_config(
        cls, cfg: GPTConfig | dict[str, Any] | None, input_shape: tuple[int, ...], num_outputs: int
    ) -> GPT:
        """Build from a config: ``input_shape = (block_size,)``, ``num_outputs`` = vocab size."""
        cfg = GPTConfig(**cfg) if isinstance(cfg, dict) else (cfg or GPTConfig())
        if len(input_shape) != 1:
            raise ValueError(
                f"needs token sequences, input_shape=(block_size,), got {tuple(input_shape)}"
            )
        vocab = num_outputs if cfg.vocab_size is None else cfg.vocab_size
        if vocab < num_outputs:
            raise ValueError(
                f"vocab_size: {vocab} is smaller than the data's vocabulary of {num_outputs}"
            )
        return cls(replace(cfg, block_size=int(input_shape[0]), vocab_size=vocab))

    def _rope_tables(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        hd = self.config.n_embd // self.config.n_head
        inv_freq = 1.0 / self.config.rope_base ** (
            torch.arange(0, hd, 2, device=device).float() / hd
        )
        pos = torch.arange(self.config.block_size, device=device).float()
        angles = torch.outer(pos, inv_freq)  # (T, hd/2)
        return angles.cos(), angles.sin()

    def reset_parameters(self) -> None:
        """nanoGPT init: N(0, 0.02), zero biases, residual projections N(0, 0.02/sqrt(2*n_layer))."""
        self.apply(self._init_weights)
        proj_std = 0.02 / math.sqrt(2 * self.config.n_layer)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight") or name.endswith("mlp.w_proj"):
                if self.config.zero_init_proj:
                    nn.init.zeros_(p)
                else:
                    nn.init.normal_(p, 0.0, proj_std)
        if self.config.position == "rotary":  # also restores the tables after to_empty()
            self.rope_cos, self.rope_sin = self._rope_tables(self.lm_head.weight.device)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, 0.0, 0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, 0.02)
        elif isinstance(module, MoEMLP):
            module.reset_parameters(0.02)

    @property
    def blocks(self) -> nn.ModuleList:
        """The distinct blocks (units a sharding strategy wraps one by one)."""
        return self.transformer.h

    @property
    def layers(self) -> list[nn.Module]:
        """The block applied at each of the n_layer layers (shared blocks repeat)."""
        h = self.transformer.h
        return list(h) if self._layer_map is None else [h[j] for j in self._layer_map]

    def make_kv_cache(self, batch_size: int, max_len: int | None = None) -> KVCache:
        """Empty KV cache for ``batch_size`` sequences of up to ``max_len`` (<= block_size)."""
        cfg = self.config
        max_len = cfg.block_size if max_len is None else max_len
        if not 1 <= max_len <= cfg.block_size:
            raise ValueError(
                f"KV cache max_len={max_len} must be in [1, block_size={cfg.block_size}]"
            )
        w = self.lm_head.weight
        shape = (cfg.n_layer, batch_size, cfg.n_head, max_len, cfg.n_embd // cfg.n_head)
        # every position is written before it is read, so empty buffers are enough
        return KVCache(w.new_empty(shape), w.new_empty(shape))

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        kv_cache: KVCache | None = None,
    ) -> LMOutput:
        """Logits (B, T, vocab) for every position and, with targets, the losses (LMOutput).

        Cross-entropy is over all tokens (targets == -1 ignored). With ``kv_cache``, ``idx``
        continues the cached sequence at position ``kv_cache.pos`` (inference only).
        """
        cfg = self.config
        B, T = idx.shape
        start = 0 if kv_cache is None else kv_cache.pos
        if start + T > cfg.block_size:
            raise ValueError(
                f"sequence of {start + T} tokens is longer than the model's block_size="
                f"{cfg.block_size}; crop the context or build the model with a larger block_size"
            )
        if kv_cache is not None and (start + T > kv_cache.max_len or B != kv_cache.k.shape[1]):
            raise ValueError(
                f"KV cache holds {kv_cache.k.shape[1]} sequences of {kv_cache.max_len} positions; "
                f"cannot add {T} tokens at position {start} for a batch of {B}"
            )
        t = self.transformer
        x = t.wte(idx)  # (B, T, C)
        cos = sin = None
        if cfg.position == "learned":
            x = x + t.wpe.weight[start : start + T]  # (T, C) broadcast over the batch
        else:
            cos, sin = self.rope_cos[start : start + T], self.rope_sin[start : start + T]
        x = t.drop(x)
        ckpt = cfg.activation_checkpointing and self.training and torch.is_grad_enabled()
        blocks = t.h if self._layer_map is None else [t.h[j] for j in self._layer_map]
        aux_sum = counts = None
        n_moe = 0
        for i, block in enumerate(blocks):
            if kv_cache is not None:
                x, aux = block(x, cos, sin, (kv_cache.k[i], kv_cache.v[i]), start)
            elif ckpt:
                x, aux = checkpoint(block, x, cos, sin, use_reentrant=False)
            else:
                x, aux = block(x, cos, sin)
            if aux is not None:
                c = block.mlp.last_expert_counts
                aux_sum, counts = (aux, c) if aux_sum is None else (aux_sum + aux, counts + c)
                n_moe += 1
        if kv_cache is not None:
            kv_cache.pos = start + T
        logits = self.lm_head(t.ln_f(x))  # (B, T, vocab)
        if cfg.logit_softcap is not None:
            logits = cfg.logit_softcap * torch.tanh(logits / cfg.logit_softcap)
        if aux_sum is not None:
            aux_sum = aux_sum / n_moe
            counts = counts.detach()
        if targets is None:
            return LMOutput(logits, aux_loss=aux_sum, expert_counts=counts)
        ce = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        loss = ce if aux_sum is None else ce + cfg.moe.aux_loss_coef * aux_sum
        return LMOutput(logits, loss, ce, aux_sum, counts)

    def num_parameters(self, exclude_embeddings: bool = False) -> int:
        """Exact parameter count; shared and tied tensors are counted once.

        ``exclude_embeddings`` drops the lookup tables that do no matmul work: the position
        table and, when not tied, the token table (a tied token table is counted as the head,
        like nanoGPT's ``get_num_params``).
        """
        n = sum(p.numel() for p in self.parameters())
        if exclude_embeddings:
            t = self.transformer
            if "wpe" in t:
                n -= t.wpe.weight.numel()
            if self.lm_head.weight is not t.wte.weight:
                n -= t.wte.weight.numel()
        return n

    def flops_per_token(self) -> int:
        """Training FLOPs per token: ``6 * N + 12 * n_layer * n_embd * block_size``.

        The PaLM appendix B / nanoGPT ``estimate_mfu`` estimate (forward + backward, attention
        at full context). N counts the parameters a token passes through: equal to
        ``num_parameters(exclude_embeddings=True)`` for a dense model without sharing; a shared
        block counts once per layer using it and an MoE layer counts top_k of its experts.
        """
        cfg = self.config
        per_block = []
        for block in self.transformer.h:
            n = sum(p.numel() for p in block.parameters())
            if block.is_moe:
                experts = block.mlp.expert_parameters()
                n += experts * cfg.moe.top_k // cfg.moe.n_experts - experts
            per_block.append(n)
        layer_map = self._layer_map or range(cfg.n_layer)
        n_active = sum(per_block[j] for j in layer_map)
        n_active += self.lm_head.weight.numel()
        n_active += sum(p.numel() for p in self.transformer.ln_f.parameters())
        return 6 * n_active + 12 * cfg.n_layer * cfg.n_embd * cfg.block_size
