"""What the hardware computes natively (read once from the device, no benchmark)."""

from __future__ import annotations

import functools

import torch


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16(device: str | torch.device) -> bool:
    """Whether bf16 matmuls run natively on ``device``.

    A CPU without AVX512-BF16 or AMX emulates them, ~100x slower than fp32 (measured: 1 vs 150
    GFLOP/s on a 2-core AVX2 EPYC).
    """
    kind = torch.device(device).type
    if kind == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if kind == "cpu":
        return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    return False
