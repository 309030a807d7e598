"""The measured matmul peak of this machine, the denominator of MFU (model FLOPs utilisation)."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from bigtrain._io import atomic_write_text

CACHE = Path("~/.cache/bigtrain/peak_flops.json").expanduser()


def _key(dtype: torch.dtype, device: str) -> str:
    if device == "cuda":
        name = torch.cuda.get_device_name()
    else:
        name = f"{platform.processor() or platform.machine()}-{torch.get_num_threads()}threads"
    return f"{name}|{dtype}|torch{torch.__version__}"


def measure_peak_flops(
    dtype: torch.dtype = torch.float32, device: str = "cpu", size: int = 512, seconds: float = 0.3
) -> float:
    """FLOP/s of repeated square matmuls (best of several timed rounds)."""
    a = torch.randn(size, size, device=device).to(dtype)
    b = torch.randn(size, size, device=device).to(dtype)
    flops = 2 * size**3
    best = 0.0
    deadline = time.perf_counter() + seconds
    torch.mm(a, b)  # warm up
    while time.perf_counter() < deadline or best == 0.0:
        if device == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * flops / (time.perf_counter() - t))
    return best


def measured_peak_flops(dtype: torch.dtype = torch.float32, device: str = "cpu") -> float:
    """The highest matmul rate ever measured here (cached in ~/.cache/bigtrain/peak_flops.json).

    Each call measures for 0.3 s and keeps the maximum with the cached value: a measurement
    taken while another process shared the cores is too low, and keeping the maximum lets the
    estimate only move toward the true peak.
    """
    key = _key(dtype, device)
    try:
        cache = json.loads(CACHE.read_text())
    except (OSError, ValueError):
        cache = {}
    peak = max(measure_peak_flops(dtype, device), float(cache.get(key, 0.0)))
    cache[key] = peak
    try:
        CACHE.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(CACHE, json.dumps(cache, indent=1))
    except OSError:
        pass  # a read-only home only costs a re-measurement next time
    return peak
