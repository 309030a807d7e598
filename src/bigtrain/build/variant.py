"""Variant run folders: a compressed or merged copy of a trained run that eval/predict/generate
read like any other run folder.

A variant folder holds the source run's ``config.yaml`` (and tokenizer/vocabulary files), the
variant's weights as ``checkpoints/best/model.safetensors`` (plain tensors, checksummed) and
``variant.json``: the list of structural steps that turn the model the config builds into the
model the weights fit (``[{"kind": "prune_structured", ...}, {"kind": "quantize_dynamic", ...}]``).
Loading builds the model from the config, applies each step's *restorer* (shrink pruned layers,
swap in quantized modules...) and then loads the weights strictly.
"""

from __future__ import annotations

import importlib
import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from bigtrain._io import atomic_write_text, replace_folder, temp_dir_beside
from bigtrain.core.checkpoint import file_sha256
from bigtrain.errors import CheckpointError, ConfigError

VARIANT_FILE = "variant.json"
#: files of the source run a variant keeps (what eval/predict/generate read besides weights)
_COPIED = ("config.yaml", "tokenizer.json", "vocab.json", "meta.json")

#: step kind -> "module:function"; the function is ``restore(model, step) -> nn.Module`` and
#: changes the model's structure (never its values) so that the variant's weights fit it
RESTORERS: dict[str, str] = {
    "prune_structured": "bigtrain.compress.prune:restore_structure",
    "prune_masks": "bigtrain.compress.prune:restore_masks",
    "quantize_dynamic": "bigtrain.compress.quantize:restore_quantized",
    "quantize_static": "bigtrain.compress.quantize:restore_quantized",
}


def _restorer(kind: str) -> Callable[[nn.Module, dict[str, Any]], nn.Module]:
    if kind not in RESTORERS:
        raise CheckpointError(
            f"{VARIANT_FILE} names an unknown step '{kind}' (known: {', '.join(RESTORERS)}); "
            "was it written by a newer bigtrain?"
        )
    module, func = RESTORERS[kind].split(":")
    return getattr(importlib.import_module(module), func)


def variant_steps(run_dir: str | Path) -> list[dict[str, Any]]:
    """The structural steps recorded in ``run_dir/variant.json`` ([] for a plain run)."""
    path = Path(run_dir) / VARIANT_FILE
    if not path.is_file():
        return []
    try:
        data = json.loads(path.read_text())
        steps = data["steps"]
        if not isinstance(steps, list) or not all(
            isinstance(s, dict) and "kind" in s for s in steps
        ):
            raise ValueError("steps must be a list of {kind: ...}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{path} is unreadable or malformed ({e})") from None
    return steps


def restore_variant(model: nn.Module, run_dir: str | Path) -> nn.Module:
    """``model`` (as the run's config builds it) reshaped to fit the variant's weights."""
    for step in variant_steps(run_dir):
        model = _restorer(step["kind"])(model, step)
    return model


def save_variant_run(
    source_run: str | Path,
    out_dir: str | Path,
    model: nn.Module,
    steps: Sequence[dict[str, Any]],
    summary: dict[str, Any] | None = None,
    overwrite: bool = False,
    state: dict[str, torch.Tensor] | None = None,
    config: dict[str, Any] | None = None,
) -> Path:
    """Write ``model`` as a variant run folder ``out_dir`` of ``source_run``, atomically.

    ``state`` replaces ``model.state_dict()`` for models whose state holds more than plain
    tensors (quantized modules pack theirs). ``config`` (a recipe mapping) is written as the
    variant's config.yaml instead of the source's (a merged LoRA run drops its lora section).
    ``steps`` extends the source's own steps (a pruned run quantized later keeps both). The
    folder appears complete or not at all; an existing non-empty ``out_dir`` is refused unless
    ``overwrite``, and the source run is never written to.
    """
    source, out = Path(source_run).resolve(), Path(out_dir)
    if out.resolve() == source:
        raise ConfigError(f"--out {out} is the source run itself; choose a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise ConfigError(f"--out {out} exists and is not empty; choose a new folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_dir_beside(out)
    try:
        for name in _COPIED:
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        if config is not None:
            import yaml

            atomic_write_text(tmp / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        best = tmp / "checkpoints" / "best"
        best.mkdir(parents=True)
        if state is None:
            state = model.state_dict()
        state = {k: v.detach().contiguous() for k, v in state.items()}
        save_file(state, str(best / "model.safetensors"))
        meta = {"sha256": {"model.safetensors": file_sha256(best / "model.safetensors")}}
        atomic_write_text(best / "best.json", json.dumps(meta))
        all_steps = [*variant_steps(source), *steps]
        record = {"source": str(source), "steps": all_steps}
        atomic_write_text(tmp / VARIANT_FILE, json.dumps(record, indent=2))
        body = {"status": "variant", "source": str(source), **(summary or {})}
        atomic_write_text(tmp / "summary.json", json.dumps(body, indent=2))
        replace_folder(tmp, out)  # an old folder (overwrite) is swapped out whole
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
