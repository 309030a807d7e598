"""Autoregressive sampling for GPT (KV cache), RNNLM (carried state) and any other LM.

Context longer than GPT's block_size: the model sees a sliding window of the last block_size
tokens (nanoGPT's cropping). The KV cache is used while the whole sequence fits; after that
each new token needs a full forward over the window (positions shift, so cached keys are stale),
exactly what ``use_cache=False`` computes, so both paths give the same tokens.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from bigtrain.models.gpt import GPT
from bigtrain.models.rnn import RNNLM

__all__ = ["generate", "sample_logits", "top_k_filter", "top_p_filter"]


def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Set every logit below the k-th largest of its row to -inf (ties with it are kept)."""
    k = min(k, logits.size(-1))
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the smallest set of most likely tokens whose probability reaches p."""
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of strictly more likely tokens
    sorted_logits = sorted_logits.masked_fill(before >= p, float("-inf"))  # top-1 always kept
    return torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)


def sample_logits(
    logits: torch.Tensor,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Next token ids (B,) from logits (B, vocab); temperature 0 means greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None:
        logits = top_k_filter(logits, top_k)
    if top_p is not None and top_p < 1.0:
        logits = top_p_filter(logits, top_p)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _unwrap(model: nn.Module) -> nn.Module:
    # DDP keeps the model in .module, torch.compile in ._orig_mod
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = model._orig_mod
        else:
            return model


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    use_cache: bool = True,
) -> torch.Tensor:
    """Extend prompts ``idx`` (B, T) by ``max_new_tokens`` sampled tokens; returns (B, T + new).

    The model is put in eval mode for the call and restored afterwards. Sampling draws only
    from ``generator`` (same seed -> same tokens). ``use_cache`` picks GPT's KV cache or RNNLM's
    carried state; other models (``model(idx)`` returning logits or ``(logits, loss)``) always
    rerun the whole context, cropped to ``model.config.block_size`` when they have one.
    """
    if idx.dim() != 2 or idx.size(1) == 0:
        raise ValueError(
            f"prompt must be (batch, length>=1) token ids, got shape {tuple(idx.shape)}"
        )
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 0")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature={temperature} must be a number >= 0 (0 = greedy)")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k={top_k} must be >= 1 (or None)")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p} must be in (0, 1] (or None)")
    net = _unwrap(model)
    was_training = net.training
    net.eval()
    try:
        B, T0 = idx.shape
        out = idx.new_empty(B, T0 + max_new_tokens)  # (B, T0 + new), filled in place
        out[:, :T0] = idx
        if max_new_tokens == 0:
            return out

        def sample(logits: torch.Tensor) -> torch.Tensor:
            return sample_logits(logits[:, -1], temperature, top_k, top_p, generator)

        if isinstance(net, GPT) and use_cache:
            _gpt_cached(net, out, T0, sample)
        elif isinstance(net, RNNLM) and use_cache:
            logits, state = net.step(idx)
            for n in range(T0, out.size(1)):
                out[:, n] = sample(logits)
                if n + 1 < out.size(1):
                    logits, state = net.step(out[:, n : n + 1], state)
        else:
            cfg = getattr(net, "config", None)
            window = None if isinstance(net, RNNLM) else getattr(cfg, "block_size", None)
            for n in range(T0, out.size(1)):
                ctx = out[:, :n] if window is None else out[:, max(0, n - window) : n]
                logits = net(ctx)
                out[:, n] = sample(logits[0] if isinstance(logits, tuple) else logits)
        return out
    finally:
        net.train(was_training)


def _gpt_cached(model: GPT, out: torch.Tensor, T0: int, sample) -> None:
    """Fill ``out[:, T0:]`` using the KV cache while the sequence fits in block_size."""
    block = model.config.block_size
    cache = model.make_kv_cache(out.size(0), max_len=min(out.size(1), block))
    logits = model(out[:, max(0, T0 - block) : T0], kv_cache=cache).logits  # prefill
    for n in range(T0, out.size(1)):
        out[:, n] = sample(logits)
        if n + 1 == out.size(1):
            break
        if cache.pos < cache.max_len:  # out[:, :n] is cached: feed only the new token
            logits = model(out[:, n : n + 1], kv_cache=cache).logits
        else:  # window full: positions shift, recompute the last block_size tokens
            logits = model(out[:, n + 1 - block : n + 1]).logits
