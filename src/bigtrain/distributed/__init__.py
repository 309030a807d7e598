"""Many processes through torchrun: DDP and FSDP2 strategies and the ``bigtrain launch`` wrapper.

``STRATEGIES`` maps ``distributed.strategy`` (ddp, fsdp) to its class; the builder makes one
and nothing else in bigtrain asks which strategy it has.
"""

from __future__ import annotations

from bigtrain.distributed.ddp import DataParallel, DDPStrategy
from bigtrain.distributed.fsdp import FSDPStrategy, HasBlocks
from bigtrain.distributed.process_group import (
    ProcessInfo,
    destroy_process_group,
    process_info,
    threads_per_process,
)

STRATEGIES = {"ddp": DDPStrategy, "fsdp": FSDPStrategy}

__all__ = [
    "STRATEGIES",
    "DDPStrategy",
    "DataParallel",
    "FSDPStrategy",
    "HasBlocks",
    "ProcessInfo",
    "destroy_process_group",
    "process_info",
    "threads_per_process",
]
