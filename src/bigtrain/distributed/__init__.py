"""Many processes through torchrun: DDP and FSDP2 strategies and the ``bigtrain launch`` wrapper.

``strategy_class(name)`` gives the Strategy for ``distributed.strategy`` ddp or fsdp; nothing
else in bigtrain asks which strategy it has. The strategies are imported on first use:
``torch.distributed.tensor``/``fsdp``/``checkpoint`` add ~1.5 s to a start that does not need
them.
"""

from __future__ import annotations

import importlib

from bigtrain.distributed.process_group import (
    ProcessInfo,
    destroy_process_group,
    process_info,
    threads_per_process,
)

#: distributed.strategy -> "module:Class" under bigtrain.distributed
STRATEGIES = {"ddp": "ddp:DDPStrategy", "fsdp": "fsdp:FSDPStrategy"}


def strategy_class(name: str) -> type:
    """The Strategy class of ``distributed.strategy`` ``name`` (ddp or fsdp)."""
    module, cls = STRATEGIES[name].split(":")
    return getattr(importlib.import_module(f"bigtrain.distributed.{module}"), cls)


__all__ = [
    "STRATEGIES",
    "ProcessInfo",
    "destroy_process_group",
    "process_info",
    "strategy_class",
    "threads_per_process",
]
