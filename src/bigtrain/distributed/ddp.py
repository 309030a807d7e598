"""Data parallelism: every process holds the whole model and a share of each global batch.

``DataParallel`` is what DDP and FSDP share: the process group, collectives, agreement on stops
and the strided evaluation shard. ``DDPStrategy`` wraps the model in
``torch.nn.parallel.DistributedDataParallel``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from bigtrain.core.checkpoint import weights_copy
from bigtrain.core.steps import split_batch
from bigtrain.core.strategy import SingleDevice
from bigtrain.distributed.process_group import init_process_group, process_info


def local_device(device: str | torch.device) -> torch.device:
    """This process's device: ``cuda:LOCAL_RANK`` for a GPU run, the CPU otherwise."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", process_info().local_rank)
    return device


class DataParallel(SingleDevice):
    """Collectives and the evaluation shard over the job's process group.

    Precision (autocast, fp16 loss scaling) is SingleDevice's, on this process's device.
    """

    #: True when the model's forward is itself a collective (sharded weights): evaluation
    #: shards must then have the same length on every process
    lockstep_eval = False

    def __init__(
        self, device: str | torch.device = "cpu", precision: str = "fp32", timeout_s: float = 600
    ) -> None:
        super().__init__(local_device(device), precision)
        info = init_process_group(self.device, timeout_s)
        self.rank, self.world_size = info.rank, info.world_size
        self.local_rank = info.local_rank

    def _all_reduce(self, value: torch.Tensor, op: dist.ReduceOp) -> torch.Tensor:
        # NCCL reduces GPU tensors only; gloo CPU ones
        out = value.detach().clone().to(self.device)
        dist.all_reduce(out, op=op)
        return out

    def reduce_sum(self, value: torch.Tensor) -> torch.Tensor:
        return self._all_reduce(value, dist.ReduceOp.SUM).to(value.device)

    def agree(self, flag: bool) -> bool:
        if self.world_size == 1:
            return flag
        return bool(self._all_reduce(torch.tensor(int(flag)), dist.ReduceOp.MAX).item())

    def broadcast_object(self, value: Any) -> Any:
        if self.world_size == 1:
            return value
        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()

    def shard(self, batches: Iterable[Any]) -> Iterator[tuple[Any, bool]]:
        """Batch ``i`` is this process's when ``i % world_size == rank``.

        Every process walks the same batches (in memory: no copies), so each batch is counted
        exactly once, computed exactly as one process computes it. A list of fewer batches than
        processes is first cut into ``world_size`` parts per batch, so that every process has
        examples (metric objects need at least one update to reduce their state). With
        ``lockstep_eval``, processes with one batch fewer repeat the last batch uncounted.
        """
        if isinstance(batches, Sequence) and 0 < len(batches) < self.world_size:
            batches = [part for b in batches for part, _ in split_batch(b, self.world_size)]
        mine, last, total = 0, None, 0
        for i, batch in enumerate(batches):
            total, last = i + 1, batch
            if i % self.world_size == self.rank:
                mine += 1
                yield batch, True
        if self.lockstep_eval and last is not None:
            for _ in range(-(-total // self.world_size) - mine):
                yield last, False


class DDPStrategy(DataParallel):
    """``torch.nn.parallel.DistributedDataParallel``: gradients are averaged across processes
    during backward. With ``grad_accum``, only the last micro-batch all-reduces (``no_sync``).

    Checkpoints are the single-process format, written by the main process from the unwrapped
    model (no ``module.`` prefix), so every command reads a DDP run folder unchanged.
    """

    def __init__(
        self,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        timeout_s: float = 600,
        find_unused_parameters: bool = False,
    ) -> None:
        super().__init__(device, precision, timeout_s)
        self.find_unused_parameters = find_unused_parameters
        self._ddp: DistributedDataParallel | None = None

    def setup(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        # DDP broadcasts rank 0's buffers before every forward; the non-persistent ones (the
        # GPT's rotary tables) are recomputed identically by every process: skip them
        saved = model.state_dict().keys()
        derived = [name for name, _ in model.named_buffers() if name not in saved]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, derived)
        self._ddp = DistributedDataParallel(
            model,
            device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=self.find_unused_parameters,
        )  # broadcasts the main process's weights and buffers to the others
        return self._ddp

    def unwrap(self, model: nn.Module) -> nn.Module:
        return model.module if isinstance(model, DistributedDataParallel) else model

    def gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        if last or self._ddp is None:
            return contextlib.nullcontext()
        return self._ddp.no_sync()

    def save_checkpoint(
        self,
        path: str | Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
    ) -> Path:
        # every process holds the same weights and optimizer state: the main one writes them,
        # all of them read them back (the inherited load_checkpoint)
        if self.is_main:
            super().save_checkpoint(path, model, optimizer, state)
        self.barrier()
        return Path(path)

    def full_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return weights_copy(self.unwrap(model)) if self.is_main else {}
