"""Peak training memory per device: weights, gradients, optimizer states, activations, overhead.

The arithmetic of the ZeRO paper (Rajbhandari et al. 2020, section 3.1): mixed-precision Adam
keeps 2 + 2 + 12 = 16 bytes per parameter before activations, and ZeRO-3 (FSDP full sharding)
divides those by the number of devices. bigtrain keeps fp32 master weights and fp32
gradients and casts to bf16/fp16 inside autocast, which is also 4 + 4 + 8 = 16 bytes per
parameter with Adam. Activations are what autograd saves for backward, counted exactly on the
meta device (``counting.trace_step``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, fields

import torch

FP32 = 4

#: what each optimizer keeps per parameter (torch's and bigtrain's implementations)
OPTIMIZER_STATES = {
    "sgd": "a momentum buffer when momentum > 0, else nothing",
    "adagrad": "sum of squared gradients (+ a step scalar)",
    "rmsprop": "squared-gradient average, + a momentum buffer when momentum > 0 (+ a step scalar)",
    "adam": "first and second moments (+ a step scalar)",
    "adamw": "first and second moments (+ a step scalar)",
    "lamb": "first and second moments",
    "lion": "one momentum",
    "muon": "a momentum buffer per hidden matrix, AdamW moments for the rest (planned as AdamW "
    "for every tensor: an upper bound, since which matrices are hidden depends on the model)",
    "adafactor": "factored second moments: one row and one column vector per matrix, the full "
    "variance for vectors (+ a step scalar)",
}


def optimizer_state_bytes(
    name: str, shapes: Iterable[torch.Size | tuple[int, ...]], momentum: float | None = None
) -> int:
    """Bytes of optimizer state for parameters of these shapes (fp32 states).

    Equal to the sum of the state tensors torch allocates at the first step (tested for every
    optimizer in ``OPTIMIZER_STATES``).
    """
    total = 0
    for shape in shapes:
        n = 1
        for s in shape:
            n *= s
        if name == "sgd":
            total += n if momentum else 0
        elif name == "adagrad":
            total += n + 1
        elif name == "rmsprop":
            total += n + (n if momentum else 0) + 1
        elif name in ("adam", "adamw", "muon"):
            total += 2 * n + 1
        elif name == "lamb":
            total += 2 * n
        elif name == "lion":
            total += n
        elif name == "adafactor":
            if len(shape) >= 2:
                rows = n // shape[-1]  # (..., R, 1) and (..., 1, C)
                total += rows + n // shape[-2] + 1
            else:
                total += n + 1
        else:
            raise KeyError(name)
    return total * FP32


@dataclass
class MemoryPlan:
    """Bytes per device at the peak of a training step, by what holds them."""

    weights: int
    gradients: int
    optimizer: int
    autocast_copies: int  # bf16/fp16 copies of matmul weights autocast keeps during a step
    activations: int  # saved for backward at the local micro-batch
    communication: int  # DDP gradient buckets; FSDP gathered (unsharded) blocks
    overhead: int  # framework: CUDA context and library workspaces (0 on CPU: not tensors)

    @property
    def total(self) -> int:
        return sum(getattr(self, f.name) for f in fields(self))

    @property
    def model_states(self) -> int:
        """Weights, gradients and optimizer states (what ZeRO shards)."""
        return self.weights + self.gradients + self.optimizer

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)} | {"total": self.total}


def plan_memory(
    *,
    parameters: int,
    trainable: int,
    optimizer_bytes: int,
    activation_bytes: int,
    precision: str = "fp32",
    matmul_weights: int = 0,
    strategy: str = "single",
    devices: int = 1,
    largest_block_parameters: int = 0,
    overhead: int = 0,
) -> MemoryPlan:
    """Peak memory of one device.

    Args:
        parameters / trainable: all and trainable parameter elements.
        optimizer_bytes: ``optimizer_state_bytes`` of the trainable parameters.
        activation_bytes: saved activations at this device's micro-batch (with or without
            activation checkpointing).
        precision: fp32, bf16 or fp16 (autocast: fp32 weights, low-precision matmul copies).
        matmul_weights: elements autocast copies (Linear and conv weights).
        strategy: single, ddp or fsdp; ``devices`` is the number of data-parallel devices.
        largest_block_parameters: parameters of the largest FSDP unit (a block), which FSDP
            gathers whole during its forward and backward.
        overhead: framework bytes outside tensors (hardware table).
    """
    low = 2 if precision in ("bf16", "fp16") else 0
    weights, grads, states = parameters * FP32, trainable * FP32, optimizer_bytes
    copies = matmul_weights * low
    communication = 0
    if strategy == "ddp" and devices > 1:
        communication = grads  # DDP's flat buckets (gradient_as_bucket_view is off by default)
    elif strategy == "fsdp":
        shard = max(devices, 1)
        weights, grads, states = -(-weights // shard), -(-grads // shard), -(-states // shard)
        copies = -(-copies // shard)
        # one block gathered for compute and the next prefetched, in the compute dtype, plus
        # that block's unsharded gradients before the reduce-scatter
        gathered = largest_block_parameters * (low or FP32)
        communication = 2 * gathered + largest_block_parameters * FP32 if devices > 1 else 0
    return MemoryPlan(weights, grads, states, copies, activation_bytes, communication, overhead)


def gib(n: float) -> float:
    return n / 2**30
