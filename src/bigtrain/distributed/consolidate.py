"""Sharded (FSDP) checkpoint -> the one ``model.safetensors`` that eval, predict and generate read.

Runs in one plain process: ``torch.distributed.checkpoint`` reads every shard and reassembles each
tensor into the model's own state dict, whatever world size wrote it.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from safetensors.torch import save_model

from bigtrain._io import atomic_write_text, describe_os_error, temp_dir_beside
from bigtrain.core.checkpoint import SHARDED, file_sha256, verify_checkpoint
from bigtrain.errors import CheckpointError


def consolidate(checkpoint: str | Path, model: torch.nn.Module) -> Path:
    """Fill ``model`` (built like the run's, on one process) from a sharded checkpoint and write
    ``model.safetensors`` into the checkpoint folder (its SHA-256 recorded in trainer.json).

    Returns the weights file. The checkpoint is verified first; an unsharded one is refused.
    """
    checkpoint = Path(checkpoint)
    meta = verify_checkpoint(checkpoint)
    if meta.get("layout") != "sharded":
        raise CheckpointError(f"checkpoint {checkpoint} is not sharded: its weights are one file")
    weights = model.state_dict()
    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
            warnings.filterwarnings("ignore", message=".*single process", category=UserWarning)
            dcp.load({"model": weights}, checkpoint_id=checkpoint / SHARDED)  # in place
    except Exception as e:  # DCP raises CheckpointException/RuntimeError/KeyError variously
        first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {checkpoint} does not fit this run's model ({first})"
        ) from None
    out = checkpoint / "model.safetensors"
    tmp = temp_dir_beside(out)
    try:
        save_model(model, str(tmp / out.name))
        digest = file_sha256(tmp / out.name)
        os.replace(tmp / out.name, out)
        # the weights file is complete before trainer.json names it
        meta["sha256"] = {**meta.get("sha256", {}), out.name: digest}
        atomic_write_text(checkpoint / "trainer.json", json.dumps(meta))
    except OSError as e:
        raise CheckpointError(f"cannot write {out}: {describe_os_error(e)}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
