"""A model as one safetensors file that carries what rebuilds it (docs/export.md).

The file's metadata key ``bigtrain`` holds JSON: the model's registered name, its config, the
input shape and dtype of one example, the number of outputs, the variant steps (pruned or
quantized structure) and the run's resolved config. Written to a temporary sibling and renamed,
so PATH is complete or absent.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from bigtrain.errors import CheckpointError

META_KEY = "bigtrain"
FORMAT = 1


def write_safetensors(
    state: dict[str, torch.Tensor], meta: dict[str, Any], path: str | Path
) -> Path:
    """Write ``state`` (plain tensors) with ``meta`` (JSON-able) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    body = {META_KEY: json.dumps({"format": FORMAT, **meta})}
    try:
        save_file({k: v.detach().cpu().contiguous() for k, v in state.items()}, str(tmp), body)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def read_safetensors(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(tensors, bigtrain metadata) of an exported file; CheckpointError when it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no exported model at {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = (f.metadata() or {}).get(META_KEY)
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({e})") from None
    if raw is None:
        raise CheckpointError(
            f"{path} has no '{META_KEY}' metadata: not written by bigtrain export"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError:
        raise CheckpointError(f"{path}: its '{META_KEY}' metadata is not JSON") from None
    if meta.get("format", 0) > FORMAT:
        raise CheckpointError(f"{path} was written by a newer bigtrain (format {meta['format']})")
    return state, meta
