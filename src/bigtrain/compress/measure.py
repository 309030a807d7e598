"""What a compressed model costs: parameters, bytes on disk, CPU latency (plain functions)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn


def parameter_count(model: nn.Module) -> int:
    """Weights and biases of ``model``, each shared tensor once, quantized layers included
    (their int8 weights are packed, not parameters, so ``model.parameters()`` misses them)."""
    seen = {id(p): p.numel() for p in model.parameters()}
    n = sum(seen.values())
    for module in model.modules():
        if not type(module).__module__.startswith("torch.ao.nn.") or (
            type(module).__name__ == "LinearPackedParams"  # counted by its Linear
        ):
            continue
        if hasattr(module, "_all_weight_values"):  # dynamic LSTM/GRU: weights and biases
            n += sum(t.numel() for group in module._weight_bias().values() for t in group.values())
            continue
        weight_bias = getattr(module, "_weight_bias", None)
        if callable(weight_bias):
            w, b = weight_bias()
            n += w.numel() + (0 if b is None or id(b) in seen else b.numel())
    return n


def file_size(path: str | Path) -> int:
    """Bytes of a weights file (a checkpoint folder: its model.safetensors)."""
    path = Path(path)
    return (path / "model.safetensors" if path.is_dir() else path).stat().st_size


@contextmanager
def _threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def batch_of(example: Any, batch_size: int) -> Any:
    """``example`` (a tensor or tuple of tensors with a batch dimension) cut or tiled to
    ``batch_size`` rows."""
    if isinstance(example, (tuple, list)):
        return type(example)(batch_of(e, batch_size) for e in example)
    reps = -(-batch_size // example.shape[0])
    return example.repeat(reps, *([1] * (example.ndim - 1)))[:batch_size]


def cpu_latency(
    model: nn.Module,
    example: Any,
    batch_sizes: Sequence[int] = (1, 32),
    repeats: int = 20,
    warmup: int = 3,
    threads: int | None = 1,
) -> dict[int, float]:
    """Median seconds of one forward pass at each batch size, on the CPU with ``threads``
    threads (fixed, so runs compare), after ``warmup`` untimed passes."""
    model.eval()
    out = {}
    with _threads(threads), torch.inference_mode():
        for b in batch_sizes:
            x = batch_of(example, b)
            args = x if isinstance(x, (tuple, list)) else (x,)
            for _ in range(warmup):
                model(*args)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                model(*args)
                times.append(time.perf_counter() - t0)
            out[b] = statistics.median(times)
    return out
