"""Deterministic splits and ``load_data``, the one entry point from a DataConfig to tensors."""

from __future__ import annotations

import math

import numpy as np
import torch

from bigtrain.data.builtin import DATASETS
from bigtrain.data.config import DataConfig
from bigtrain.data.tables import (
    DataBundle,
    Split,
    apply_normalization,
    encode_targets,
    fit_normalization,
    target_task,
)
from bigtrain.errors import ConfigError, DataError


def train_val_test_split(
    n: int,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    stratify_labels: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split ``range(n)`` into sorted, disjoint train/val/test index arrays that cover it.

    The split depends only on ``n``, the seed and the labels (numpy's PCG64 generator gives the
    same numbers on every machine and numpy version). The examples are put in one random order
    and the test set is its head, so the test set does not change with ``val_fraction``. With
    ``stratify_labels`` each class is spread evenly over that order (systematic sampling), so
    every split holds each class's share to within about one example, even for tiny classes.
    """
    rng = np.random.default_rng(seed)
    # argsort of uniform draws rather than rng.permutation: only the PCG64 stream and
    # random() must stay the same across numpy versions for the split to stay the same
    perm = np.argsort(rng.random(n), kind="stable")
    if stratify_labels is None:
        order = perm
    else:
        labels = np.asarray(stratify_labels)
        if len(labels) != n:
            raise DataError(f"{len(labels)} stratification labels for {n} examples")
        _, cls, counts = np.unique(labels, return_inverse=True, return_counts=True)
        grouped = perm[np.argsort(cls[perm], kind="stable")]  # by class, random within a class
        starts = np.repeat(np.cumsum(counts) - counts, counts)
        rank = np.empty(n, dtype=np.float64)
        rank[grouped] = np.arange(n) - starts
        # member j of class c sits at (j + u_c) / n_c: each class is spread evenly over [0, 1)
        key = (rank + rng.random(len(counts))[cls]) / counts[cls]
        position = np.empty(n, dtype=np.int64)
        position[perm] = np.arange(n)  # random tie-break between classes
        order = np.lexsort((position, key))
    n_test, n_val = _count(test_fraction, n), _count(val_fraction, n)
    if n_test + n_val >= n:
        raise DataError(
            f"splitting {n} examples into {n_val} validation and {n_test} test examples leaves "
            "none to train on; lower data.val_fraction/test_fraction or raise data.limit"
        )
    test, val, train = np.split(order, [n_test, n_test + n_val])
    return np.sort(train), np.sort(val), np.sort(test)


def _count(fraction: float, n: int) -> int:
    count = int(math.floor(fraction * n + 0.5))
    return max(count, 1) if fraction > 0 and n >= 3 else count  # a nonzero share gets an example


def kfold_indices(
    n: int, k: int, seed: int, stratify_labels: np.ndarray | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """K shuffled folds of ``range(n)`` as (train_idx, val_idx) (sklearn (Stratified)KFold)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    if not 2 <= k <= n:
        raise ConfigError(f"k-fold needs 2 <= k <= {n} (the number of examples), got k={k}")
    if stratify_labels is None:
        folds = KFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(n))
    else:
        labels = np.asarray(stratify_labels)
        if np.unique(labels, return_counts=True)[1].max() < k:
            raise DataError(f"no class has {k} examples, too few for stratified {k}-fold; lower k")
        splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
        folds = splitter.split(np.zeros(n), labels)
    return [(tr.astype(np.int64), va.astype(np.int64)) for tr, va in folds]


def load_data(
    cfg: DataConfig, fold: tuple[int, int] | None = None, task: str | None = None
) -> DataBundle:
    """Load, split and standardise the data set that ``cfg`` names.

    Steps: load -> keep the first ``limit`` examples -> encode the targets -> split (or, with
    ``fold=(i, k)``, hold the test split out first, exactly as without folds, and make fold ``i``
    of ``k`` of the rest the validation split) -> fit the normalisation on the train split
    only -> float32/int64 tensors.

    ``task`` is the recipe's ``task.name``. With ``data.task: auto`` it decides how targets are
    read (see ``target_task``): ``classification``/``binary`` turn whole-number float targets
    (0.0/1.0) into class ids, exactly as ``data.task: classification`` does; ``binary`` then
    needs exactly 2 classes.
    """
    x, y, meta = DATASETS.get(cfg.name)(cfg)
    x, y = _checked(x, y, cfg.name)
    test = meta.get("test")
    if test is not None:
        test = _checked(*test, f"{cfg.name} test set")
    if cfg.limit is not None:
        x, y = x[: cfg.limit], y[: cfg.limit]
        test = None if test is None else (test[0][: cfg.limit], test[1][: cfg.limit])
    image_shape = meta.get("image_shape")
    if cfg.layout == "image" and image_shape is None:
        raise ConfigError(
            f"data.layout 'image' needs image data; '{cfg.name}' has inputs of shape {x.shape[1:]}"
        )
    shape = tuple(image_shape) if cfg.layout == "image" else (math.prod(x.shape[1:]),)
    if image_shape is not None and math.prod(image_shape) != math.prod(x.shape[1:]):
        raise DataError(
            f"'{cfg.name}' says its images are {image_shape} but has inputs {x.shape[1:]}"
        )

    how, setting = target_task(cfg.task, task)
    kind, y_ids, y_test, num_classes, class_names = encode_targets(
        y, None if test is None else test[1], how, meta.get("kind"), setting
    )
    if kind != "regression" and class_names is None:
        known = meta.get("class_names")
        if known and num_classes is not None and num_classes <= len(known):
            num_classes, class_names = len(known), list(known)  # a sample may miss a class
            kind = "binary" if num_classes == 2 else "classification"
    if task == "binary" and kind == "classification":
        raise DataError(
            f"task.name 'binary' needs 2 classes, but the targets of '{cfg.name}' have "
            f"{num_classes}; use task.name: classification"
        )
    strat = y_ids if cfg.stratify and kind != "regression" else None
    train_idx, val_idx, test_idx = _split_indices(cfg, len(x), strat, test is not None, fold)

    x_train = x[train_idx]
    norm: dict = {}
    if cfg.standardize and image_shape is not None:
        images = x_train.reshape(len(x_train), *image_shape)
        norm = fit_normalization(images, meta.get("pixel_scale"), per_channel=True)
    elif cfg.standardize:
        norm = fit_normalization(x_train, None, per_channel=False)

    def make(xs: np.ndarray, ys: np.ndarray, index: np.ndarray) -> Split:
        inputs = apply_normalization(xs.reshape(len(xs), *shape), norm)
        return Split(
            inputs.contiguous(), torch.from_numpy(np.ascontiguousarray(ys)), torch.from_numpy(index)
        )

    train = make(x_train, y_ids[train_idx], train_idx)
    val = make(x[val_idx], y_ids[val_idx], val_idx) if len(val_idx) else None
    if test is not None and y_test is not None:
        test_split = make(test[0], y_test, np.arange(len(test[0]), dtype=np.int64))
    else:
        test_split = make(x[test_idx], y_ids[test_idx], test_idx) if len(test_idx) else None
    return DataBundle(
        train=train,
        val=val,
        test=test_split,
        kind=kind,
        num_classes=num_classes,
        input_shape=shape,
        feature_names=meta.get("feature_names") if cfg.layout == "flat" else None,
        class_names=class_names if kind != "regression" else None,
        normalization=norm,
    )


def _checked(x: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x), np.asarray(y)
    if x.dtype.kind not in "biuf":
        raise DataError(f"inputs of '{what}' must be numbers, got dtype {x.dtype}")
    if x.ndim == 1:
        x = x[:, None]  # one feature per example
    if len(x) != len(y):
        raise DataError(f"'{what}' has {len(x)} inputs but {len(y)} targets")
    if len(x) == 0:
        raise DataError(f"'{what}' has no examples")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise DataError(
            f"inputs of '{what}' hold {int((~np.isfinite(x)).sum())} NaN or infinite values"
        )
    return x, y


def _split_indices(
    cfg: DataConfig, n: int, strat: np.ndarray | None, has_test: bool, fold: tuple[int, int] | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    test_fraction = 0.0 if has_test else cfg.test_fraction
    if fold is None:
        return train_val_test_split(n, cfg.val_fraction, test_fraction, cfg.split_seed, strat)
    i, k = fold
    if not 0 <= i < k:
        raise ConfigError(f"fold index must be in 0..{k - 1}, got {i}")
    rest, _, test_idx = train_val_test_split(n, 0.0, test_fraction, cfg.split_seed, strat)
    folds = kfold_indices(len(rest), k, cfg.split_seed, None if strat is None else strat[rest])
    train_pos, val_pos = folds[i]
    return np.sort(rest[train_pos]), np.sort(rest[val_pos]), test_idx
