"""FSDP2 (``torch.distributed.fsdp.fully_shard``): weights, gradients and optimizer state sharded.

Each transformer block is one unit (its weights are gathered for its forward and backward, then
freed), the root holds the rest (embeddings, head). Checkpoints are sharded with
``torch.distributed.checkpoint`` (each process writes its part, any world size reads them back);
the best weights are gathered into one file so ``eval`` and ``generate`` read them as usual.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import load_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_model_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor

from bigtrain._io import describe_os_error, replace_folder
from bigtrain.core.checkpoint import (
    SHARDED,
    load_state,
    new_checkpoint_folder,
    recorded_checksum,
    verify_checksum,
    write_state,
)
from bigtrain.distributed.ddp import DataParallel
from bigtrain.errors import CheckpointError, ConfigError


@runtime_checkable
class HasBlocks(Protocol):
    """A model made of repeated blocks (GPT, the encoder): the units FSDP shards one by one."""

    blocks: nn.ModuleList


class FSDPStrategy(DataParallel):
    """Fully sharded data parallelism on the job's process group.

    ``precision`` bf16 keeps weights in bf16 for compute and communication and reduces
    gradients in fp32 (a MixedPrecisionPolicy), with autocast around the forward as on one
    device; fp16 loss scaling is not supported with sharding. ``cpu_offload`` keeps the shards
    and optimizer state in host memory (GPU runs). ``reshard_after_forward`` frees gathered
    weights after each block's forward (less memory, one more all-gather in backward).
    """

    lockstep_eval = True  # every forward all-gathers: processes evaluate equally many batches

    def __init__(
        self,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        timeout_s: float = 600,
        reshard_after_forward: bool = True,
        cpu_offload: bool = False,
    ) -> None:
        if precision == "fp16":
            raise ConfigError(
                "distributed.strategy fsdp does not support trainer.precision fp16 (loss "
                "scaling of sharded gradients); use bf16 or fp32"
            )
        super().__init__(device, precision, timeout_s)
        if cpu_offload and self.device.type != "cuda":
            raise ConfigError(
                "distributed.cpu_offload moves GPU weights to host memory; this run is on the CPU"
            )
        self.reshard_after_forward = reshard_after_forward
        self.cpu_offload = cpu_offload
        self._root: nn.Module | None = None

    def setup(self, model: nn.Module) -> nn.Module:
        if not isinstance(model, HasBlocks) or len(model.blocks) == 0:
            raise ConfigError(
                f"distributed.strategy fsdp shards a model block by block, and "
                f"'{type(model).__name__}' has no blocks; use distributed.strategy=ddp"
            )
        model = model.to(self.device)
        options: dict[str, Any] = {"reshard_after_forward": self.reshard_after_forward}
        if self.precision == "bf16":
            options["mp_policy"] = MixedPrecisionPolicy(
                param_dtype=torch.bfloat16, reduce_dtype=torch.float32
            )
        if self.cpu_offload:
            options["offload_policy"] = CPUOffloadPolicy()
        for block in model.blocks:
            fully_shard(block, **options)
        fully_shard(model, **options)  # in place: parameter names stay the plain model's
        self._root = model
        return model

    def gradient_sync(self, last: bool) -> contextlib.AbstractContextManager:
        return _gradient_sync(self._root, last)

    def clip_grad_norm(self, params: list[torch.Tensor], max_norm: float) -> torch.Tensor:
        norm = super().clip_grad_norm(params, max_norm)
        return norm.full_tensor() if isinstance(norm, DTensor) else norm

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(
        self,
        path: str | Path,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        state: dict[str, Any],
    ) -> Path:
        """Every process writes its shards into one temporary folder (named by the main
        process), the main one adds the rest of the state, checksums and renames it."""
        path = Path(path)
        tmp = Path(self.broadcast_object(str(new_checkpoint_folder(path)) if self.is_main else ""))
        try:
            model_state, optim_state = get_state_dict(model, optimizer)
            dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=tmp / SHARDED)
            if self.is_main:
                files = sorted(str(f.relative_to(tmp)) for f in (tmp / SHARDED).rglob("*"))
                write_state(tmp, state, files, layout="sharded")
                replace_folder(tmp, path)
        except OSError as e:
            if self.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise CheckpointError(
                f"cannot write checkpoint {path}: {describe_os_error(e)}"
            ) from None
        self.barrier()
        return path

    def load_checkpoint(
        self, path: str | Path, model: nn.Module, optimizer: torch.optim.Optimizer
    ) -> dict[str, Any]:
        path = Path(path)
        meta, state = load_state(path)
        if meta.get("layout") != "sharded":
            raise CheckpointError(
                f"checkpoint {path} was written by one process or DDP (one weights file), not "
                "FSDP; resume it with distributed.strategy=ddp"
            )
        model_state, optim_state = get_state_dict(model, optimizer)
        loaded = {"model": model_state, "optimizer": optim_state}
        dcp.load(loaded, checkpoint_id=path / SHARDED)  # re-shards to this world size
        set_state_dict(
            model,
            optimizer,
            model_state_dict=loaded["model"],
            optim_state_dict=loaded["optimizer"],
        )
        return state

    def full_weights(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Gathered on the main process (a collective: every process calls it)."""
        full = get_model_state_dict(
            model, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
        )
        if not self.is_main:
            return {}
        tied = _tied_duplicates(model)  # stored once, as safetensors does
        # clone: gathered tensors may be views into one communication buffer
        return {k: v.detach().clone().contiguous() for k, v in full.items() if k not in tied}

    def load_weights(self, path: str | Path, model: nn.Module) -> None:
        path = Path(path)
        file = path / "model.safetensors" if path.is_dir() else path
        if not file.is_file():
            raise CheckpointError(f"no weights at {file}")
        verify_checksum(file, recorded_checksum(file.parent))
        weights = load_file(str(file))
        expected = get_model_state_dict(model).keys()
        # tied weights are stored once: the others name the same tensor
        for name in expected - weights.keys():
            twin = _tied_twin(model, name)
            if twin is None or twin not in weights:
                raise CheckpointError(f"checkpoint {file} does not fit this model: no {name}")
            weights[name] = weights[twin]
        set_model_state_dict(
            model, weights, options=StateDictOptions(full_state_dict=True, strict=True)
        )


def _tied_duplicates(model: nn.Module) -> set[str]:
    """Names of parameters that are another, earlier-named parameter (tied embeddings)."""
    seen: set[int] = set()
    duplicates = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            duplicates.add(name)
        seen.add(id(p))
    return duplicates


def _tied_twin(model: nn.Module, name: str) -> str | None:
    """Another state-dict name of the parameter called ``name`` (tied embeddings), if any."""
    params = dict(model.named_parameters(remove_duplicate=False))
    target = params.get(name)
    return next((n for n, p in params.items() if p is target and n != name), None)


@contextlib.contextmanager
def _gradient_sync(root: nn.Module | None, last: bool) -> Iterator[None]:
    """FSDP2's ``no_sync``: reduce-scatter gradients only on the step's last micro-batch."""
    if root is None or last:
        yield
        return
    root.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        root.set_requires_gradient_sync(True)
