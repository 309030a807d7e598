"""Atomic checkpoints that load without unpickling anything.

A checkpoint is a folder::

    model.safetensors    weights (shared/tied tensors stored once)
    state.safetensors    every other tensor: optimizer moments, RNG states, sampler generator
    trainer.json         everything else (step, epoch, schedule, callbacks, data position...),
                         with {"__tensor__": key} placeholders pointing into state.safetensors

It is written into a temporary sibling folder and renamed into place, so a crash never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, load_model, save_file, save_model

from bigtrain.errors import CheckpointError

FORMAT_VERSION = 1
_TENSOR = "__tensor__"


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested structure by placeholders, collecting them in ``tensors``."""
    if isinstance(obj, torch.Tensor):
        tensors[prefix] = obj.detach().cpu().contiguous()
        return {_TENSOR: prefix}
    if isinstance(obj, np.ndarray):
        tensors[prefix] = torch.from_numpy(np.ascontiguousarray(obj))
        return {_TENSOR: prefix, "numpy": True}
    if isinstance(obj, dict):
        return {str(k): _flatten(v, f"{prefix}.{k}", tensors) for k, v in obj.items()} | (
            {"__int_keys__": True} if obj and all(isinstance(k, int) for k in obj) else {}
        )
    if isinstance(obj, (list, tuple)):
        return [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, (float, np.floating)) and not np.isfinite(obj):
        return {"__float__": str(float(obj))}
    if isinstance(obj, np.integer):
        return int(obj)
    return obj


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if _TENSOR in obj:
            t = tensors[obj[_TENSOR]]
            return t.numpy() if obj.get("numpy") else t
        if "__float__" in obj:
            return float(obj["__float__"])
        int_keys = obj.get("__int_keys__", False)
        return {
            (int(k) if int_keys else k): _unflatten(v, tensors)
            for k, v in obj.items()
            if k != "__int_keys__"
        }
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    return obj


def rng_state() -> dict[str, Any]:
    """Every global RNG a training step may touch (torch CPU/CUDA, Python, NumPy)."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
        "numpy": [np_state[0], np_state[1], int(np_state[2]), int(np_state[3]), float(np_state[4])],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_folder(tmp: Path, path: Path) -> None:
    """Move the finished folder ``tmp`` to ``path``, replacing a folder already there.

    The old folder is renamed aside first (a directory cannot be renamed onto a non-empty one),
    so at every moment ``path`` is either the complete old folder or the complete new one.
    """
    if path.exists():
        trash = path.parent / f".{path.name}.old-{os.getpid()}"
        os.replace(path, trash)
        os.replace(tmp, path)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, path)
    _fsync_dir(path.parent)


def save_checkpoint(path: str | Path, model: torch.nn.Module, state: dict[str, Any]) -> Path:
    """Write ``model`` weights and the nested ``state`` dict atomically into folder ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        save_model(model, str(tmp / "model.safetensors"))
        tensors: dict[str, torch.Tensor] = {}
        meta = {"format_version": FORMAT_VERSION, "state": _flatten(state, "s", tensors)}
        save_file(tensors, str(tmp / "state.safetensors"))
        with open(tmp / "trainer.json", "w") as f:
            json.dump(meta, f)
        for name in ("model.safetensors", "state.safetensors", "trainer.json"):
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        replace_folder(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _check_folder(path: Path) -> None:
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} does not exist")
    for name in ("model.safetensors", "state.safetensors", "trainer.json"):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")


def load_weights(path: str | Path, model: torch.nn.Module, strict: bool = True) -> None:
    """Load only the model weights of a checkpoint folder into ``model``."""
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file():
        raise CheckpointError(f"no weights at {file}")
    try:
        missing, unexpected = load_model(model, str(file), strict=False)
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {file} is corrupt or truncated ({e})") from None
    except RuntimeError as e:  # shape mismatch
        first = str(e).strip().splitlines()[-1].strip()
        raise CheckpointError(f"checkpoint {file} does not fit this model: {first}") from None
    if strict and (missing or unexpected):
        raise CheckpointError(
            f"checkpoint {file} does not fit this model: missing {sorted(missing)[:3]}, "
            f"unexpected {sorted(unexpected)[:3]}"
        )


def load_checkpoint(path: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load weights into ``model`` and return the nested state dict saved with them."""
    path = Path(path)
    _check_folder(path)
    load_weights(path, model)
    try:
        tensors = load_file(str(path / "state.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({e})") from None
    try:
        meta = json.loads((path / "trainer.json").read_text())
        return _unflatten(meta["state"], tensors)
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}/trainer.json is corrupt ({e})") from None
