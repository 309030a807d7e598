"""Rebuild an exported model: ``load_exported(path) -> nn.Module`` (docs/export.md).

Lives in build/ because it needs the model registry (bigtrain.models) and the variant
restorers (bigtrain.compress); bigtrain.export itself only reads and writes files.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from bigtrain.build.variant import _restorer
from bigtrain.core.checkpoint import load_weights, weights_copy
from bigtrain.errors import CheckpointError
from bigtrain.export.safetensors import read_safetensors, write_safetensors
from bigtrain.models import build_model


def model_io(model: nn.Module, example: torch.Tensor) -> dict[str, Any]:
    """Input shape and dtype of one example and the number of outputs, by one forward pass."""
    model.eval()
    with torch.no_grad():
        y = model(example[:2])
    y = y[0] if isinstance(y, tuple) else y
    return {
        "input_shape": list(example.shape[1:]),
        "input_dtype": str(example.dtype).removeprefix("torch."),
        "num_outputs": int(y.shape[-1]),
    }


def model_params(model: nn.Module, cfg) -> dict[str, Any]:
    """The model's config as plain values: its own ``config`` dataclass when it keeps one (sizes
    learnt from the data filled in), else the recipe's model section."""
    own = getattr(model, "config", None)
    if dataclasses.is_dataclass(own) and not isinstance(own, type):
        return dataclasses.asdict(own)
    return cfg.model.fields()


def save_exported(
    model: nn.Module,
    path: str | Path,
    *,
    name: str,
    params: dict[str, Any],
    io: dict[str, Any],
    steps: list[dict[str, Any]] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write ``model``'s weights and what rebuilds it to one safetensors file, then check that
    ``load_exported`` gives back the same outputs (CheckpointError otherwise; nothing kept)."""
    meta = {"model": name, "model_config": params, **io, "steps": steps or [], "config": config}
    path = Path(path)
    write_safetensors(weights_copy(model), meta, path)
    try:
        rebuilt = load_exported(path)
        x = torch.zeros([2, *io["input_shape"]], dtype=getattr(torch, io["input_dtype"]))
        with torch.no_grad():
            a, b = model.eval()(x), rebuilt(x)
        a, b = (a[0], b[0]) if isinstance(a, tuple) else (a, b)
        if not torch.equal(a, b):
            raise CheckpointError(
                f"the exported model at {path} does not reproduce the run's outputs"
            )
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return path


def load_exported(path: str | Path) -> nn.Module:
    """The model of a file written by ``bigtrain export --format safetensors`` (eval mode)."""
    state, meta = read_safetensors(path)
    del state  # load_weights reads the file itself (verifies values, handles tied weights)
    try:
        model = build_model(
            meta["model"], meta["model_config"], tuple(meta["input_shape"]), meta["num_outputs"]
        )
    except KeyError as e:
        raise CheckpointError(f"{path}: metadata lacks {e}") from None
    for step in meta.get("steps", []):
        model = _restorer(step["kind"])(model, step)
    load_weights(path, model)
    return model.eval()
