"""Atomic checkpoints that load without unpickling anything.

A checkpoint is a folder::

    model.safetensors    weights (shared/tied tensors stored once)
    state.safetensors    every other tensor: optimizer moments, RNG states, sampler generator
    trainer.json         everything else (step, epoch, schedule, callbacks, data position...),
                         with {"__tensor__": key} placeholders pointing into state.safetensors,
                         and the SHA-256 of both .safetensors files (verified on load)

It is written into a temporary sibling folder and renamed into place, so a crash never leaves a
half-written checkpoint under the final name.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import _remove_duplicate_names, load_file, load_model, save_file, save_model

from bigtrain._io import describe_os_error, replace_folder, temp_dir_beside
from bigtrain.errors import CheckpointError

FORMAT_VERSION = 2
SHARDED = "sharded"  # the torch.distributed.checkpoint folder inside a sharded checkpoint
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


def weights_copy(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of the model's weights, each shared/tied tensor once (as safetensors saves)."""
    weights = model.state_dict()
    dropped = {n for names in _remove_duplicate_names(weights).values() for n in names}
    return {
        k: v.detach().to("cpu", copy=True).contiguous()
        for k, v in weights.items()
        if k not in dropped
    }


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


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (checkpoints store one per weights file)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def save_checkpoint(path: str | Path, model: torch.nn.Module, state: dict[str, Any]) -> Path:
    """Write ``model`` weights and the nested ``state`` dict atomically into folder ``path``.

    ``trainer.json`` records the SHA-256 of both tensor files; loading verifies them.
    """
    path = Path(path)
    tmp = new_checkpoint_folder(path)
    try:
        save_model(model, str(tmp / "model.safetensors"))
        write_state(tmp, state, ["model.safetensors"])
        replace_folder(tmp, path)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"cannot write checkpoint {path}: {describe_os_error(e)}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def new_checkpoint_folder(path: Path) -> Path:
    """The empty temporary folder a checkpoint for ``path`` is written into, then renamed."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return temp_dir_beside(path)
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {path}: {describe_os_error(e)}") from None


def write_state(
    folder: Path, state: dict[str, Any], weight_files: list[str], layout: str = "single"
) -> None:
    """Write ``state.safetensors`` and ``trainer.json`` into a checkpoint folder being made.

    ``weight_files`` (paths relative to ``folder``, already written) and ``state.safetensors``
    get their SHA-256 recorded in ``trainer.json``; every recorded file is fsynced. ``layout``
    is ``single`` (one ``model.safetensors``) or ``sharded`` (torch.distributed.checkpoint).
    """
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "layout": layout,
        "state": _flatten(state, "s", tensors),
    }
    save_file(tensors, str(folder / "state.safetensors"))
    names = [*weight_files, "state.safetensors"]
    meta["sha256"] = {n: file_sha256(folder / n) for n in names}
    with open(folder / "trainer.json", "w") as f:
        json.dump(meta, f)
    for name in [*names, "trainer.json"]:
        with open(folder / name, "rb") as f:
            os.fsync(f.fileno())


def _check_folder(path: Path) -> None:
    if not path.is_dir():
        raise CheckpointError(f"checkpoint folder {path} does not exist")
    for name in ("state.safetensors", "trainer.json"):
        if not (path / name).is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")


def read_json(path: Path) -> Any:
    """A JSON file of a checkpoint, or CheckpointError naming it when unreadable."""
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt or unreadable ({type(e).__name__})") from None


# files this process has already hashed, by (path, size, mtime, expected digest): a resume
# verifies the checkpoint before touching the run folder and loads it right after, and a
# multi-GB checkpoint should not be hashed twice. Any change to the file changes its key.
_VERIFIED: set[tuple[str, int, int, str]] = set()


def verify_checksum(file: Path, expected: str | None) -> None:
    """Raise CheckpointError when ``file``'s SHA-256 is not ``expected`` (None: not recorded)."""
    if expected is None:
        return
    st = file.stat()
    key = (str(file.resolve()), st.st_size, st.st_mtime_ns, expected)
    if key in _VERIFIED:
        return
    if file_sha256(file) != expected:
        raise CheckpointError(
            f"checkpoint {file} is corrupt: its checksum does not match the one recorded when "
            "it was written"
        )
    _VERIFIED.add(key)


def recorded_checksum(folder: Path, name: str = "model.safetensors") -> str | None:
    """The SHA-256 a checkpoint folder recorded for ``name`` (trainer.json or best.json)."""
    for meta_name in ("trainer.json", "best.json"):
        meta_file = folder / meta_name
        if meta_file.is_file():
            meta = read_json(meta_file)
            sums = meta.get("sha256", {}) if isinstance(meta, dict) else {}
            return sums.get(name) if isinstance(sums, dict) else None
    return None


def load_weights(path: str | Path, model: torch.nn.Module, strict: bool = True) -> None:
    """Load only the model weights of a checkpoint folder (or a .safetensors file) into ``model``.

    The file's checksum is verified when its folder recorded one, and every floating-point
    weight must be finite: a corrupt or NaN-filled checkpoint never loads silently.
    """
    path = Path(path)
    file = path / "model.safetensors" if path.is_dir() else path
    if not file.is_file() and (path / SHARDED).is_dir():
        raise CheckpointError(
            f"checkpoint {path} is sharded (distributed.strategy=fsdp); make its weights one "
            f"file first: bigtrain consolidate {path}"
        )
    if not file.is_file():
        raise CheckpointError(f"no weights at {file}")
    verify_checksum(file, recorded_checksum(file.parent))
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
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(
                f"checkpoint {file} holds non-finite values (NaN or inf) in {name}; "
                "it cannot be used"
            )


def verify_checkpoint(path: str | Path) -> dict[str, Any]:
    """Check a checkpoint folder is complete and every file matches its recorded checksum;
    returns trainer.json's content (CheckpointError naming the problem otherwise)."""
    path = Path(path)
    _check_folder(path)
    meta = read_json(path / "trainer.json")
    if not isinstance(meta, dict) or "state" not in meta:
        raise CheckpointError(f"checkpoint {path}/trainer.json is corrupt (no state)")
    sums = meta.get("sha256", {})
    sums = sums if isinstance(sums, dict) else {}
    if meta.get("layout", "single") == "single":
        sums = {"model.safetensors": None, **sums}  # a single-file checkpoint needs its weights
    for name, expected in sums.items():
        file = path / name
        if not file.is_file():
            raise CheckpointError(f"checkpoint {path} is incomplete: {name} is missing")
        verify_checksum(file, expected)
    return meta


def load_state(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify a checkpoint folder and return (trainer.json's metadata, the nested state)."""
    path = Path(path)
    meta = verify_checkpoint(path)
    try:
        tensors = load_file(str(path / "state.safetensors"))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({e})") from None
    try:
        return meta, _unflatten(meta["state"], tensors)
    except (KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint {path}/trainer.json is corrupt ({e})") from None


def load_checkpoint(path: str | Path, model: torch.nn.Module) -> dict[str, Any]:
    """Load weights into ``model`` and return the nested state dict saved with them."""
    path = Path(path)
    meta, state = load_state(path)
    if meta.get("layout", "single") != "single":
        raise CheckpointError(
            f"checkpoint {path} is sharded (written with distributed.strategy=fsdp): resume it "
            f"with fsdp, or make its weights one file: bigtrain consolidate {path}"
        )
    load_weights(path, model)
    return state
