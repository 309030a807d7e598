"""Exact counts from a model built on the meta device: parameters, FLOPs, saved activations.

Nothing here allocates memory: the model and the batch are meta tensors, so a 7B-parameter
recipe is traced in seconds. FLOPs come from ``torch.utils.flop_counter.FlopCounterMode`` (the
count torch itself uses); saved activations from ``saved_tensors_hooks``, which see every
tensor autograd keeps for the backward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from torch.utils.flop_counter import FlopCounterMode


@runtime_checkable
class HasBlocks(Protocol):
    """A model made of repeated blocks (GPT, the encoder): what activation checkpointing
    recomputes and FSDP shards one at a time."""

    blocks: Any  # a sequence of nn.Module, in the order the forward calls them


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Parameters per module type (``Linear``, ``Embedding``, ``LayerNorm``...), largest first.

    Each parameter is counted once, under the first module that owns it, so the values sum to
    ``sum(p.numel() for p in model.parameters())`` (tied and shared tensors counted once).
    """
    counts: dict[str, int] = {}
    seen: set[int] = set()
    for module in model.modules():
        for p in module.parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            kind = type(module).__name__
            counts[kind] = counts.get(kind, 0) + p.numel()
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def matmul_weight_elements(model: nn.Module) -> int:
    """Elements of the weights autocast copies to bf16/fp16 (those of Linear and conv layers)."""
    seen: set[int] = set()
    n = 0
    for module in model.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            w = module.weight
            if id(w) not in seen:
                seen.add(id(w))
                n += w.numel()
    return n


@dataclass
class BlockCall:
    """One call of a block during the traced forward."""

    input_bytes: int  # the block's input: what activation checkpointing keeps
    saved_bytes: int = 0  # what autograd saved inside the block


@dataclass
class StepTrace:
    """What one forward + backward of ``batch_size`` examples costs (from a meta trace)."""

    batch_size: int
    forward_flops: int
    backward_flops: int
    saved_bytes: int  # activations autograd keeps for backward (parameters excluded)
    largest_saved_bytes: int  # the largest of them (logits or their log-softmax, typically)
    blocks: list[BlockCall] = field(default_factory=list)
    flops_by_op: dict[str, int] = field(default_factory=dict)

    @property
    def flops(self) -> int:
        return self.forward_flops + self.backward_flops

    def checkpointed_saved_bytes(self) -> int:
        """Saved activations with activation checkpointing of every block.

        Each block keeps only its input; in backward one block at a time is recomputed, so its
        own activations come back for that block only (the largest one sets the peak).
        """
        if not self.blocks:
            return self.saved_bytes
        inside = sum(b.saved_bytes for b in self.blocks)
        kept = sum(b.input_bytes for b in self.blocks)
        return self.saved_bytes - inside + kept + max(b.saved_bytes for b in self.blocks)


class FusedAttention(TorchFunctionMode):
    """Trace ``F.scaled_dot_product_attention`` as the fused kernel a real run uses.

    On the meta device SDPA falls back to its math path, which saves the (T, T) attention
    matrix; the flash kernels of CUDA and CPU keep only the output and a log-sum-exp per row,
    and recompute the rest in backward. The flash op (or, with a mask, the memory-efficient
    one) has meta shapes and FLOP formulas, so both the memory and the FLOPs are the fused
    kernel's.
    """

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.scaled_dot_product_attention:
            return func(*args, **kwargs)
        q, k, v = args[:3]
        mask = args[3] if len(args) > 3 else kwargs.get("attn_mask")
        dropout = args[4] if len(args) > 4 else kwargs.get("dropout_p", 0.0)
        causal = args[5] if len(args) > 5 else kwargs.get("is_causal", False)
        scale = kwargs.get("scale")
        if mask is None:
            return torch.ops.aten._scaled_dot_product_flash_attention(
                q, k, v, dropout, causal, False, scale=scale
            )[0]
        return torch.ops.aten._scaled_dot_product_efficient_attention(
            q, k, v, mask, True, dropout, causal, scale=scale
        )[0]


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    # views share a storage: a tensor saved by several ops, or q/k/v slices of one qkv output,
    # occupy memory once
    storage = t.untyped_storage()
    return storage._cdata, storage.nbytes()


def trace_step(
    model: nn.Module,
    batch: Any,
    loss_fn: Callable[[nn.Module, Any], torch.Tensor],
    batch_size: int,
    blocks: Iterable[nn.Module] | None = None,
) -> StepTrace:
    """Count FLOPs and saved activations of one training forward + backward of ``batch``.

    Args:
        model: the model (on the meta device: nothing is allocated).
        batch: an example batch of meta tensors.
        loss_fn: ``loss_fn(model, batch)`` -> scalar loss tensor.
        batch_size: examples in ``batch`` (recorded with the trace).
        blocks: the model's repeated blocks, to attribute saved activations to each call
            (what activation checkpointing would recompute).
    """
    param_storages = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}
    calls: list[BlockCall] = []
    current: list[BlockCall] = []  # the block being run (a stack: blocks do not nest here)

    def pack(t: torch.Tensor) -> torch.Tensor:
        key, nbytes = _storage_key(t)
        if key not in param_storages and key not in saved:
            saved[key] = nbytes
            if current:
                current[-1].saved_bytes += nbytes
        return t

    def before_block(module: nn.Module, args: tuple) -> None:
        x = args[0] if args else None
        size = x.numel() * x.element_size() if isinstance(x, torch.Tensor) else 0
        calls.append(BlockCall(size))
        current.append(calls[-1])

    def after_block(module: nn.Module, args: tuple, output: Any) -> None:
        current.pop()

    handles = []
    for block in {id(b): b for b in blocks or ()}.values():  # a shared block is hooked once
        handles.append(block.register_forward_pre_hook(before_block))
        handles.append(block.register_forward_hook(after_block))
    was_training = model.training
    model.train()
    forward, backward = FlopCounterMode(display=False), FlopCounterMode(display=False)
    try:
        hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        with forward, hooks, FusedAttention():
            loss = loss_fn(model, batch)
        with backward:
            loss.backward()
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
        model.zero_grad(set_to_none=True)
    by_op: dict[str, int] = {}
    for mode in (forward, backward):
        for op, n in mode.get_flop_counts().get("Global", {}).items():
            name = str(op).split(".")[1] if "." in str(op) else str(op)
            by_op[name] = by_op.get(name, 0) + int(n)
    return StepTrace(
        batch_size=batch_size,
        forward_flops=int(forward.get_total_flops()),
        backward_flops=int(backward.get_total_flops()),
        saved_bytes=sum(saved.values()),
        largest_saved_bytes=max(saved.values(), default=0),
        blocks=calls,
        flops_by_op=by_op,
    )
