"""Measured memory: the peak of live tensor bytes while a function runs, and the process's peak RSS.

``peak_tensor_memory`` is the ground truth that memory predictions are checked against and that
``bigtrain batch-size-find`` compares with a limit. On CPU it reads the allocator events of the
torch profiler (every tensor allocation and free, with its size and time); on CUDA it uses the
caching allocator's own peak counter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch


def peak_tensor_memory(fn: Callable[[], object], device: str | torch.device = "cpu") -> int:
    """Peak bytes of tensor memory that ``fn()`` held at once, above what was live before it.

    Only what ``fn`` allocates counts: the running total of its allocations minus its frees of
    them, at its highest. Tensors alive before the call are the baseline; on CPU the profiler
    does not see a free of one of them (torch warns once), so such a free earns no credit and
    the result is an upper bound there. A tensor ``fn`` keeps alive counts at its size.

    Args:
        fn: the work to measure (its return value is dropped).
        device: ``"cpu"`` (torch profiler allocation events) or a CUDA device
            (``torch.cuda.max_memory_allocated`` minus the memory allocated before the call).

    Returns:
        Bytes (the allocator's sizes: CUDA rounds each block up to 512 bytes).
    """
    dev = torch.device(device)
    if dev.type == "cuda":
        return _cuda_peak(fn, dev)
    if dev.type != "cpu":
        raise ValueError(f"peak_tensor_memory measures cpu or cuda, not {dev.type}")
    return _cpu_peak(fn)


def _cuda_peak(fn: Callable[[], object], dev: torch.device) -> int:
    torch.cuda.synchronize(dev)
    before = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    fn()
    torch.cuda.synchronize(dev)
    return max(0, torch.cuda.max_memory_allocated(dev) - before)


def _cpu_peak(fn: Callable[[], object]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    deltas = _allocation_deltas(prof)
    peak = total = 0
    for _, size in sorted(deltas, key=lambda d: d[0]):
        total += size
        peak = max(peak, total)
    return peak


def _allocation_deltas(prof) -> list[tuple[int, int]]:
    """``(time_ns, signed bytes)`` of every CPU allocation (+) and free (-) the profiler saw.

    The raw event tree has each allocator event with its own time. The public event list folds
    allocations made inside an operator into that operator (losing a temporary it frees before
    returning), so it is only the fallback for a torch without the tree.
    """
    tree = getattr(getattr(prof.profiler, "kineto_results", None), "experimental_event_tree", None)
    if tree is not None:
        out, stack = [], list(tree())
        while stack:
            event = stack.pop()
            stack.extend(event.children)
            fields = event.extra_fields
            if type(fields).__name__ == "_ExtraFields_Allocation" and fields.device.type == "cpu":
                out.append((event.start_time_ns, int(fields.alloc_size)))
        return out
    return [
        (int(e.time_range.start * 1000), int(e.self_cpu_memory_usage))
        for e in prof.events()
        if e.self_cpu_memory_usage
    ]


def process_peak_rss() -> int | None:
    """The process's peak resident memory in bytes (``VmHWM``), or None where /proc lacks it.

    Unlike ``peak_tensor_memory`` this counts everything (Python objects, libraries, the
    allocator's cached pages), so it is an upper bound on what tensors needed.
    """
    with contextlib.suppress(OSError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    return None


def reset_process_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (writing 5 to /proc/self/clear_refs); False when the
    kernel refuses, in which case ``process_peak_rss`` keeps the peak since the process began."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


__all__ = ["peak_tensor_memory", "process_peak_rss", "reset_process_peak_rss"]
