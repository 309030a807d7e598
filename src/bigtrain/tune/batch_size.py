"""The largest batch that fits a memory limit, and training throughput against the batch size.

Batch sizes double from the recipe's (1 for ``full``) upward. At each size a fresh copy of the
recipe is built (no run folder) and trained for a few real steps: the first two measure the
peak tensor memory (``plan.measure.peak_tensor_memory``), the next ones the throughput. The
memory of a size is extrapolated linearly from the sizes measured before it, and a size whose
prediction exceeds the limit is never tried (so the search cannot run the machine out of
memory); the search then bisects between the last size that fitted and the first too big, to
within 1/16 of the batch. The train split's size caps the batch.

Training memory here is the model's weights and buffers plus the peak of what the steps
allocate (gradients, optimizer state, activations, the batch). The default limit is the memory
available when the search starts (MemAvailable on CPU, free GPU memory on CUDA) times a safety
factor.
"""

from __future__ import annotations

import csv
import gc
import io
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bigtrain._io import meminfo
from bigtrain.build import build
from bigtrain.config import RunConfig
from bigtrain.config.loader import validate
from bigtrain.errors import ConfigError
from bigtrain.plan.measure import peak_tensor_memory
from bigtrain.tune.lr_find import endless, step_trainer

SAFETY = {"cpu": 0.8, "cuda": 0.9}  # the share of the free memory a search may plan to use
MEMORY_STEPS = 2  # the first step allocates optimizer state; the second holds it with grads
MIN_TIMED_S = 0.2  # timed steps are repeated (up to MAX_TIMED_STEPS) until they last this long
MAX_TIMED_STEPS = 100
_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}
_UNITS |= {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}
_UNITS |= {"kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_memory(text: str) -> int:
    """``"4GiB"`` -> 4294967296; also ``512MiB``, ``8GB`` (powers of 10), ``2g`` or bytes."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e[0-9]+)?)\s*([a-z]*)\s*", str(text).lower())
    if m is None or m.group(2) not in _UNITS or float(m.group(1)) <= 0:
        raise ConfigError(f"--memory-limit '{text}' is not a size like 4GiB, 512MiB or 8GB")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def free_memory(device: torch.device) -> int:
    """Bytes that training could still take on ``device``: MemAvailable (CPU) or free GPU
    memory (CUDA)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    available = meminfo("MemAvailable")
    if available is not None:
        return available
    raise ConfigError("cannot read the available memory (/proc/meminfo); pass --memory-limit")


@dataclass
class Probe:
    """One batch size: its measured (or, for a skipped size, predicted) memory and throughput."""

    batch_size: int
    peak_bytes: int | None  # weights + peak of the steps; None when not tried
    predicted_bytes: int | None
    throughput: float | None  # examples (or tokens) per second
    fits: bool


@dataclass
class BatchSizeResult:
    """The search: every probe in the order tried, the answer and why the search stopped."""

    device: str
    limit: int
    unit: str  # "examples" or "tokens"
    probes: list[Probe] = field(default_factory=list)
    best: int | None = None
    reason: str = ""

    def curve(self) -> list[Probe]:
        """The measured probes by batch size (the throughput curve)."""
        return sorted((p for p in self.probes if p.peak_bytes is not None),
                      key=lambda p: p.batch_size)  # fmt: skip

    def to_csv(self) -> str:
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["batch_size", "peak_bytes", "predicted_bytes", f"{self.unit}_per_s", "fits"])
        for p in sorted(self.probes, key=lambda p: p.batch_size):
            w.writerow([p.batch_size, p.peak_bytes if p.peak_bytes is not None else "",
                        p.predicted_bytes or "",
                        f"{p.throughput:.6g}" if p.throughput is not None else "", p.fits])  # fmt: skip
        return out.getvalue()


def _items(batch: Any, tokens: bool) -> int:
    """Examples (or target tokens) in a batch."""
    first = batch
    if isinstance(batch, dict):
        first = next(iter(batch.values()))
    elif isinstance(batch, (tuple, list)):
        first = batch[-1] if tokens else batch[0]
    return int(first.numel() if tokens else first.shape[0])


def _weights_bytes(model: torch.nn.Module) -> int:
    seen, total = set(), 0
    for t in [*model.parameters(), *model.buffers()]:
        ptr = t.untyped_storage().data_ptr()
        if ptr not in seen:  # tied weights share one storage
            seen.add(ptr)
            total += t.untyped_storage().nbytes()
    return total


def measure(cfg: RunConfig, batch_size: int, steps: int) -> tuple[int, float, str]:
    """``(training memory in bytes, throughput, unit)`` of real steps at ``batch_size``."""
    data = cfg.model_dump(mode="json")
    data["data"]["batch_size"] = batch_size
    data["batch_size_schedule"] = None  # the probed size stays fixed
    components = build(validate(data, f"batch size {batch_size}"), run_dir=None, quiet=True)
    total = MEMORY_STEPS + MAX_TIMED_STEPS
    trainer = step_trainer(components, components.trainer.state.schedule, total)
    state, strategy = trainer.state, trainer.strategy
    state.model.train()
    tokens = components.trainer.state.counts_tokens
    batches = endless(state.train_data)

    def step() -> int:
        batch = strategy.to_device(next(batches))
        trainer.train_step(batch)
        return _items(batch, tokens)

    def first_steps() -> None:
        for _ in range(MEMORY_STEPS):
            step()

    peak = _weights_bytes(state.model) + peak_tensor_memory(first_steps, strategy.device)
    sync = torch.cuda.synchronize if strategy.device.type == "cuda" else (lambda: None)
    sync()
    t0, items, done = time.perf_counter(), 0, 0
    while done < steps or (time.perf_counter() - t0 < MIN_TIMED_S and done < MAX_TIMED_STEPS):
        items += step()
        done += 1
    sync()
    rate = items / (time.perf_counter() - t0)
    return peak, rate, "tokens" if tokens else "examples"


def _predict(probes: list[Probe], b: int) -> int | None:
    """Memory at batch ``b`` from the measured probes: the line through the two measured sizes
    nearest below ``b``; with one probe, its memory scaled with ``b`` (an overestimate: weights
    and optimizer state do not grow with the batch)."""
    below = sorted((p for p in probes if p.peak_bytes is not None and p.batch_size < b),
                   key=lambda p: p.batch_size)  # fmt: skip
    if not below:
        return None
    last = below[-1]
    if len(below) >= 2:
        prev = below[-2]
        slope = (last.peak_bytes - prev.peak_bytes) / (last.batch_size - prev.batch_size)
        if slope > 0:
            return int(last.peak_bytes + slope * (b - last.batch_size))
    return int(last.peak_bytes * b / last.batch_size)


def find_batch_size(
    cfg: RunConfig,
    memory_limit: int | None = None,
    max_batch: int | None = None,
    steps: int = 3,
    on_probe: Callable[[Probe], None] | None = None,
) -> BatchSizeResult:
    """Search the largest batch whose training memory fits ``memory_limit`` (default: the
    free memory times ``SAFETY``), measuring throughput on the way. See the module docstring.

    Args:
        max_batch: the largest batch to try (default: the train split's size, when known).
        steps: timed steps per size (after the memory steps).
        on_probe: called after each size is measured or skipped.
    """
    if steps < 1:
        raise ConfigError(f"--steps must be at least 1, got {steps}")
    if max_batch is not None and max_batch < 1:
        raise ConfigError(f"--max-batch must be at least 1, got {max_batch}")
    probe_built = build(cfg, run_dir=None, quiet=True)  # validates and tells device and data size
    device = probe_built.trainer.strategy.device
    n_train = getattr(probe_built.trainer.state.train_data, "n", None)
    weights = _weights_bytes(probe_built.model)
    del probe_built
    gc.collect()
    limit = memory_limit or int(free_memory(device) * SAFETY.get(device.type, 0.8))
    if weights > limit:  # no batch can fit: nothing worth measuring
        reason = f"the model's weights alone take {format_bytes(weights)}"
        return BatchSizeResult(str(device), limit, "examples", reason=reason)
    caps = [c for c in (max_batch, n_train if isinstance(n_train, int) else None) if c]
    cap = min(caps) if caps else None
    start = cfg.data.batch_size if isinstance(cfg.data.batch_size, int) else 1
    start = min(start, cap) if cap else start
    result = BatchSizeResult(str(device), limit, "examples")

    def fits(b: int) -> bool:
        predicted = _predict(result.probes, b)
        if predicted is not None and predicted > limit:
            probe = Probe(b, None, predicted, None, False)
        else:
            peak, rate, result.unit = measure(cfg, b, steps)
            gc.collect()  # this size's model and optimizer are gone before the next is built
            if device.type == "cuda":
                torch.cuda.empty_cache()  # its cached blocks must not count against the next
            probe = Probe(b, peak, predicted, rate, peak <= limit)
        result.probes.append(probe)
        if on_probe is not None:
            on_probe(probe)
        return probe.fits

    lo, hi, b = 0, None, start  # lo: the largest size known to fit (0: none yet)
    while True:
        if not fits(b):
            hi = b
            break
        lo = b
        if cap is not None and b >= cap:
            result.reason = f"the train split's size or --max-batch ({cap}) caps the batch"
            break
        b = min(2 * b, cap) if cap is not None else 2 * b
    while hi is not None and hi - lo > max(1, lo // 16):
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    result.best = lo or None
    if hi is not None:
        result.reason = f"batch {hi} would need more than the {limit / 2**20:.0f} MiB limit"
    if result.best is None:
        result.reason = f"even batch 1 needs more than the {limit / 2**20:.1f} MiB limit"
    return result


def format_bytes(n: float | None) -> str:
    """``1536`` -> ``"1.5 KiB"``."""
    if n is None or not math.isfinite(n):
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


__all__ = [
    "BatchSizeResult",
    "Probe",
    "find_batch_size",
    "format_bytes",
    "free_memory",
    "measure",
    "parse_memory",
]
