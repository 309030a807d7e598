"""The process group: who this process is among the job's processes, read from torchrun's env.

torchrun (or ``bigtrain launch``, or SLURM through torchrun) sets RANK, WORLD_SIZE, LOCAL_RANK,
LOCAL_WORLD_SIZE, MASTER_ADDR and MASTER_PORT for every worker. A strategy asked for without them
runs as a group of one, so a recipe with ``distributed.strategy: ddp`` also runs as a plain
``bigtrain train``.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from bigtrain.errors import ConfigError


@dataclass(frozen=True)
class ProcessInfo:
    """This process's place in the job (all zeros and ones for a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def launched(self) -> bool:
        """True under torchrun (the variables are set), even for a job of one process."""
        return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def process_info() -> ProcessInfo:
    """Read torchrun's variables; ConfigError when they are malformed."""
    env = os.environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local_rank = int(env.get("LOCAL_RANK", str(rank)))
        local_world = int(env.get("LOCAL_WORLD_SIZE", str(world)))
    except ValueError:
        raise ConfigError(
            "RANK/WORLD_SIZE/LOCAL_RANK must be integers (they are set by torchrun)"
        ) from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK={rank} is not in [0, WORLD_SIZE={world})")
    return ProcessInfo(rank, world, local_rank, local_world)


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def threads_per_process(local_world_size: int) -> int:
    """Intra-op threads per process so that the processes on one machine share its cores."""
    return max(1, usable_cores() // max(1, local_world_size))


def init_process_group(device: torch.device, timeout_s: float) -> ProcessInfo:
    """Join the job's process group once (gloo on CPU, NCCL on CUDA); returns this process.

    ``timeout_s`` bounds every collective: a rank that stops answering becomes a clear error
    on the others instead of a silent stall. Without torchrun's variables, a one-process group
    is made in memory.
    """
    info = process_info()
    if dist.is_initialized():
        return ProcessInfo(dist.get_rank(), dist.get_world_size(), info.local_rank,
                           info.local_world_size)  # fmt: skip
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if info.launched:
        dist.init_process_group(backend, timeout=timeout, device_id=device if
                                device.type == "cuda" else None)  # fmt: skip
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1,
                                timeout=timeout)  # fmt: skip
    return info


def destroy_process_group() -> None:
    """Leave the process group (at the end of a run; harmless when there is none)."""
    if dist.is_initialized():
        dist.destroy_process_group()
