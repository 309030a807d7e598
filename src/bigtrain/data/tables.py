"""The in-memory form of a data set (Split, DataBundle) and the conventions that produce it:
label encoding, task inference and train-only normalisation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict

import numpy as np
import torch
from torch import Tensor

from bigtrain.errors import DataError

Kind = Literal["classification", "regression", "binary"]


class DataMeta(TypedDict, total=False):
    """What a data-set function may say about its arrays (every key is optional).

    Keys:
        kind: "classification" or "regression" when the data set knows (otherwise inferred).
        feature_names: one name per input column (tabular data).
        class_names: names of the label ids 0..C-1, or of the sorted raw labels.
        image_shape: (C, H, W) when the examples are images.
        pixel_scale: the maximum pixel value (16 for digits, 255 for MNIST) used to scale to [0, 1].
        test: (x, y) of a separate test set, e.g. the t10k IDX files.
    """

    kind: str
    feature_names: list[str]
    class_names: list[str]
    image_shape: tuple[int, ...]
    pixel_scale: float
    test: tuple[np.ndarray, np.ndarray]


@dataclass
class Split:
    """One part of a data set: inputs ``x`` (float32) and targets ``y`` (int64 ids or float32).

    ``index`` holds the row numbers of the examples in the loaded file (test examples from a
    separate test file are numbered within that file).
    """

    x: Tensor
    y: Tensor
    index: Tensor | None = None

    def __len__(self) -> int:
        return int(self.x.shape[0])


@dataclass
class DataBundle:
    """Train/val/test splits plus what a model, a task and a predictor need to know about them.

    ``normalization`` is ``{}`` when inputs were not standardised, otherwise
    ``{"scale": s, "mean": [...], "std": [...], "axis": "feature" | "channel"}``: new inputs are
    prepared with ``apply_normalization(x, bundle.normalization)``.
    """

    train: Split
    val: Split | None
    test: Split | None
    kind: Kind
    num_classes: int | None
    input_shape: tuple[int, ...]
    feature_names: list[str] | None = None
    class_names: list[str] | None = None
    normalization: dict[str, Any] = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        """Width of the output layer: C for classification, 1 for binary, k for regression."""
        if self.kind == "classification":
            return int(self.num_classes or 0)
        if self.kind == "binary":
            return 1
        return 1 if self.train.y.ndim == 1 else int(self.train.y.shape[1])


def target_task(data_task: str, task_name: str | None) -> tuple[str, str]:
    """How to read the targets, and the setting that decided it: ``(task, setting)``.

    ``data.task`` wins when it is not ``auto``; otherwise the recipe's ``task.name`` decides
    (``classification`` and ``binary`` read targets as class labels, so float 0.0/1.0 columns
    become ids; ``regression`` reads them as values, so integer columns become floats); any other
    task name (``auto``, ``language_model``) leaves it to inference.
    """
    if data_task != "auto" or task_name is None:
        return data_task, "data.task"
    if task_name in ("classification", "binary"):
        return "classification", "task.name"
    if task_name == "regression":
        return "regression", "task.name"
    return "auto", "data.task"


def encode_targets(
    y: np.ndarray,
    y_test: np.ndarray | None,
    task: str,
    hint: str | None = None,
    setting: str = "data.task",
) -> tuple[Kind, np.ndarray, np.ndarray | None, int | None, list[str] | None]:
    """Decide the kind of task and turn raw targets into int64 ids or float32 values.

    Integer labels starting at 0 are kept as ids (C = max + 1, so a class missing from a small
    sample keeps its id); any other labels (strings, negative or offset integers) become ids in
    sorted order and their values become class names.
    Test labels must be among the training labels. ``setting`` names the recipe key that asked
    for ``task`` (for the error on continuous labels).

    Returns:
        (kind, y, y_test, num_classes, class_names); class_names is None when ids were kept.
    """
    if task == "auto":
        task = hint or _infer_task(y)
    if task == "regression":
        return (
            "regression",
            _as_values(y, "target"),
            _maybe(_as_values, y_test, "test target"),
            None,
            None,
        )
    if y.ndim != 1:
        raise DataError(f"classification labels must be one per example (1-D), got shape {y.shape}")
    keys, y_ids, num_classes, names = _label_ids(y, setting)
    y_test_ids = None
    if y_test is not None:
        y_test_ids = _map_labels(y_test, keys, num_classes)
    if num_classes < 2:
        raise DataError(
            f"classification needs at least 2 classes; the training labels have {num_classes}"
        )
    kind: Kind = "binary" if num_classes == 2 else "classification"
    return kind, y_ids, y_test_ids, num_classes, names


def _infer_task(y: np.ndarray) -> str:
    if y.dtype.kind == "f":
        return "regression"
    if y.dtype.kind in "biuUSO":
        return "classification"
    raise DataError(
        f"cannot tell classification from regression for targets of dtype {y.dtype}; set data.task"
    )


def _maybe(fn, value, *args):
    return None if value is None else fn(value, *args)


def _as_values(y: np.ndarray, what: str) -> np.ndarray:
    try:
        out = np.asarray(y, dtype=np.float32)
    except (TypeError, ValueError):
        raise DataError(
            f"regression {what}s must be numbers; got dtype {y.dtype} (e.g. {_show(y.flat[0])})"
        ) from None
    if not np.isfinite(out).all():
        raise DataError(f"{int((~np.isfinite(out)).sum())} {what} values are NaN or infinite")
    return out


def _label_ids(
    y: np.ndarray, setting: str = "data.task"
) -> tuple[np.ndarray, np.ndarray, int, list[str] | None]:
    """(sorted unique raw labels, int64 ids, number of classes, class names or None)."""
    if y.dtype.kind == "f":
        if not np.isfinite(y).all():
            raise DataError(f"{int((~np.isfinite(y)).sum())} labels are NaN or infinite")
        if (y != np.round(y)).any():
            bad = _show(y[y != np.round(y)][0])
            raise DataError(
                f"classification labels must be whole numbers or names, got {bad}; "
                f"set {setting}: regression for continuous targets"
            )
        y = y.astype(np.int64)
    if y.dtype.kind == "O":
        y = y.astype(str)
    keys, ids = np.unique(y, return_inverse=True)
    if y.dtype.kind in "biu" and keys[0] == 0:
        # labels already are ids (a class may be absent from a small sample): keep them
        num = int(keys[-1]) + 1
        return np.arange(num), y.astype(np.int64), num, None
    return keys, ids.astype(np.int64), len(keys), [str(k) for k in keys]


def _map_labels(y: np.ndarray, keys: np.ndarray, num_classes: int) -> np.ndarray:
    if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        y = y.astype(np.int64)
    if keys.dtype.kind == "U" or y.dtype.kind == "O":
        y = y.astype(str)
    try:
        pos = np.clip(np.searchsorted(keys, y), 0, len(keys) - 1)
        found = keys[pos] == y
    except (TypeError, np.exceptions.DTypePromotionError):
        pos, found = np.zeros(len(y), dtype=np.int64), np.zeros(len(y), dtype=bool)
    if not found.all():
        raise DataError(
            f"test label {_show(y[~found][0])} is not among the {num_classes} training classes; "
            "the test file must use the training file's labels"
        )
    return pos.astype(np.int64)


def _show(value: object) -> str:
    """repr of a label without numpy's type wrapper (``7``, not ``np.int64(7)``)."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def fit_normalization(x: np.ndarray, scale: float | None, per_channel: bool) -> dict[str, Any]:
    """Mean/std of the (train) inputs ``x``, after dividing by ``scale`` when it is given.

    ``per_channel`` computes one mean/std per image channel (x is (N, C, ...)); otherwise one per
    feature column of the flattened (N, D) input. A zero std becomes 1 (constant feature).
    """
    s = float(scale or 1.0)
    if per_channel:
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        mean = flat.mean(axis=(0, 2), dtype=np.float64) / s
        std = flat.std(axis=(0, 2), dtype=np.float64) / s
    else:
        flat = x.reshape(x.shape[0], -1)
        mean = flat.mean(axis=0, dtype=np.float64) / s
        std = flat.std(axis=0, dtype=np.float64) / s
    std = np.where(std > 0, std, 1.0)
    axis = "channel" if per_channel else "feature"
    return {"scale": s, "mean": mean.tolist(), "std": std.tolist(), "axis": axis}


def apply_normalization(x: np.ndarray | Tensor, normalization: dict[str, Any]) -> Tensor:
    """Return float32 ``(x / scale - mean) / std`` with the statistics of ``fit_normalization``.

    Works on (N, D) or (N, C, H, W) inputs; per-channel statistics also apply to flattened images.
    """
    if isinstance(x, np.ndarray):
        a = np.asarray(x, dtype=np.float32)
        t = torch.from_numpy(a if a.flags.writeable else a.copy())  # torch warns on read-only
    else:
        t = x.to(torch.float32)
    if not normalization:
        return t
    mean = torch.tensor(normalization["mean"], dtype=torch.float32, device=t.device)
    std = torch.tensor(normalization["std"], dtype=torch.float32, device=t.device)
    scale = float(normalization.get("scale", 1.0))
    n = t.shape[0]
    if normalization.get("axis") == "channel":
        if n and (t[0].numel() % mean.numel()):
            raise DataError(f"inputs of shape {tuple(t.shape)} do not have {mean.numel()} channels")
        view = t.reshape(n, mean.numel(), -1)  # (N, C, H*W)
        mean, std = mean.view(1, -1, 1), std.view(1, -1, 1)
    else:
        view = t.reshape(n, -1)  # (N, D)
        if view.shape[1] != mean.numel():
            raise DataError(
                f"inputs have {view.shape[1]} features but the normalisation was fitted on "
                f"{mean.numel()}"
            )
    out = (view / scale - mean) / std if scale != 1.0 else (view - mean) / std
    return out.reshape(t.shape)
