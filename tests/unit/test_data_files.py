"""User files: CSV/Parquet/npz/IDX round trips and a readable DataError for every bad input."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pandas as pd
import pytest
import torch

from bigtrain.data import DataConfig, load_data
from bigtrain.data.files import read_idx
from bigtrain.errors import DataError


def _cfg(**kw) -> DataConfig:
    kw.setdefault("standardize", False)
    return DataConfig(**kw)


def _all(bundle, attr: str) -> torch.Tensor:
    """The examples of all splits, put back in file order."""
    splits = [s for s in (bundle.train, bundle.val, bundle.test) if s is not None]
    idx = torch.cat([s.index for s in splits])
    return torch.cat([getattr(s, attr) for s in splits])[idx.argsort()]


@pytest.fixture
def frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "a": rng.normal(size=40),
            "species": ["virginica", "setosa", "versicolor", "setosa"] * 10,
            "b": rng.integers(0, 5, size=40),
            "c": rng.normal(size=40),
        }
    )


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_table_round_trip(tmp_path, frame, fmt):
    path = tmp_path / f"t.{fmt}"
    frame.to_csv(path, index=False) if fmt == "csv" else frame.to_parquet(path)
    b = load_data(_cfg(name=fmt, path=str(path), target="species"))
    assert b.feature_names == ["a", "b", "c"] and b.input_shape == (3,)
    expected = frame[["a", "b", "c"]].to_numpy(dtype=np.float32)
    assert np.array_equal(_all(b, "x").numpy(), expected)
    assert b.kind == "classification" and b.class_names == ["setosa", "versicolor", "virginica"]
    ids = {"setosa": 0, "versicolor": 1, "virginica": 2}
    assert _all(b, "y").tolist() == [ids[s] for s in frame["species"]]
    # a feature subset, and a numeric float target is a regression
    r = load_data(_cfg(name=fmt, path=str(path), target="c", features=["b"]))
    assert r.kind == "regression" and r.feature_names == ["b"]
    assert np.allclose(_all(r, "y").numpy(), frame["c"].to_numpy(dtype=np.float32))


def test_separate_test_table_uses_training_label_ids(tmp_path, frame):
    frame.to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[:6].to_csv(tmp_path / "test.csv", index=False)
    cfg = _cfg(
        name="csv",
        path=str(tmp_path / "train.csv"),
        test_path=str(tmp_path / "test.csv"),
        target="species",
    )
    b = load_data(cfg)
    assert len(b.train) + len(b.val) == 40 and len(b.test) == 6
    assert b.test.y.tolist() == [2, 0, 1, 0, 2, 0]
    bad = frame.iloc[:3].assign(species=["setosa", "rose", "setosa"])
    bad.to_csv(tmp_path / "test.csv", index=False)
    with pytest.raises(DataError, match="test label 'rose' is not among the 3 training classes"):
        load_data(cfg)


def test_offset_and_negative_labels_are_remapped(tmp_path):
    x = np.arange(24, dtype=np.float32).reshape(12, 2)
    np.savez(tmp_path / "a.npz", x=x, y=np.array([1, 2, 3] * 4))
    b = load_data(_cfg(name="npz", path=str(tmp_path / "a.npz")))
    assert b.num_classes == 3 and b.class_names == ["1", "2", "3"]
    assert _all(b, "y").tolist() == [0, 1, 2] * 4
    np.savez(tmp_path / "b.npz", X=x, y=np.array([-1, 1] * 6))
    b = load_data(_cfg(name="npz", path=str(tmp_path / "b.npz")))
    assert (
        b.kind == "binary" and b.class_names == ["-1", "1"] and _all(b, "y").tolist() == [0, 1] * 6
    )


def test_npz_images_and_test_file(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, size=(30, 6, 5), dtype=np.uint8)
    y = np.arange(30) % 3
    np.savez(tmp_path / "train.npz", x=x, y=y)
    np.savez(tmp_path / "test.npz", x=x[:4], y=y[:4])
    cfg = dict(name="npz", path=str(tmp_path / "train.npz"), test_path=str(tmp_path / "test.npz"))
    b = load_data(_cfg(layout="image", **cfg))
    assert b.input_shape == (1, 6, 5) and len(b.test) == 4
    assert torch.equal(b.test.x, torch.from_numpy(x[:4, None]).float())
    s = load_data(DataConfig(standardize=True, **cfg))  # uint8 pixels are scaled by 255
    train_pixels = x[s.train.index.numpy()] / 255.0
    assert s.normalization["scale"] == 255.0
    assert s.normalization["mean"][0] == pytest.approx(train_pixels.mean())


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    """The IDX format written by hand: 0, 0, type code, ndim, big-endian dims, big-endian data."""
    be = array.astype(array.dtype.newbyteorder(">"))
    return (
        struct.pack(">BBBB", 0, 0, code, array.ndim)
        + struct.pack(f">{array.ndim}I", *array.shape)
        + be.tobytes()
    )


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(20, 4, 3), dtype=np.uint8)
    labels = (np.arange(20) % 4).astype(np.uint8)
    suffix = ".gz" if gz else ""
    for stem, n in (("train", 20), ("t10k", 5)):
        for kind, arr in (("images-idx3", images[:n]), ("labels-idx1", labels[:n])):
            data = _idx_bytes(arr, 0x08)
            (tmp_path / f"{stem}-{kind}-ubyte{suffix}").write_bytes(
                gzip.compress(data) if gz else data
            )
    b = load_data(
        _cfg(name="idx", path=str(tmp_path / f"train-images-idx3-ubyte{suffix}"), layout="image")
    )
    assert b.input_shape == (1, 4, 3) and b.num_classes == 4 and b.test is not None
    assert np.array_equal(_all(b, "x").numpy(), images[:, None].astype(np.float32))
    # a folder of standard names: t10k becomes the test set; fashion_mnist reads the same layout
    for name in ("idx", "fashion_mnist"):
        f = load_data(_cfg(name=name, path=str(tmp_path)))
        assert len(f.test) == 5 and torch.equal(f.test.y, torch.from_numpy(labels[:5]).long())
        assert f.input_shape == (12,)


@pytest.mark.parametrize(
    "dtype, code", [(">i2", 0x0B), (">i4", 0x0C), (">f4", 0x0D), (">f8", 0x0E), ("i1", 0x09)]
)
def test_idx_types_and_memmap(tmp_path, dtype, code):
    arr = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    path = tmp_path / "a.idx"
    path.write_bytes(_idx_bytes(arr, code))
    out = read_idx(path)
    assert out.dtype.isnative and np.array_equal(out, arr)
    mapped = read_idx(path, mmap=True)
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, arr)


def _one_line_error(cfg: DataConfig, match: str) -> str:
    with pytest.raises(DataError, match=match) as e:
        load_data(cfg)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_missing_file_names_the_path(tmp_path):
    for name in ("csv", "parquet", "npz", "idx"):
        path = tmp_path / f"nope.{name}"
        kw = {"target": "y"} if name in ("csv", "parquet") else {}
        _one_line_error(_cfg(name=name, path=str(path), **kw), f"{path} does not exist")


def test_table_column_errors(tmp_path, frame):
    path = tmp_path / "t.csv"
    frame.to_csv(path, index=False)
    msg = _one_line_error(
        _cfg(name="csv", path=str(path), target="specie"), "target column 'specie' not found"
    )
    assert "did you mean 'species'" in msg and str(path) in msg
    _one_line_error(
        _cfg(name="csv", path=str(path), target="a", features=["b", "cc"]),
        "feature column 'cc'.*did you mean 'c'",
    )
    _one_line_error(
        _cfg(name="csv", path=str(path), target="a"), "feature column 'species' .* is not numeric"
    )
    frame.loc[3, "b"] = np.nan
    frame.to_csv(path, index=False)
    _one_line_error(
        _cfg(name="csv", path=str(path), target="species"), "feature column 'b' .* 1 missing values"
    )


def test_corrupt_files(tmp_path):
    garbage = bytes(np.random.default_rng(3).integers(0, 256, size=300, dtype=np.uint8))
    for name, target in (("npz", None), ("parquet", "y"), ("idx", None)):
        path = tmp_path / f"bad.{name}"
        path.write_bytes(b"\x50\x4b\x03\x04" + garbage if name == "npz" else b"\x01" + garbage)
        kw = {"target": target} if target else {}
        msg = _one_line_error(_cfg(name=name, path=str(path), **kw), str(path))
        assert name != "idx" or "is not an IDX file" in msg
    (tmp_path / "bad.csv").write_bytes(b"a,b\n1,2\n\xff\xfe,3,4,5\n")
    _one_line_error(
        _cfg(name="csv", path=str(tmp_path / "bad.csv"), target="a"), "cannot read table"
    )
    np.savez(tmp_path / "keys.npz", inputs=np.zeros(3), labels=np.zeros(3))
    _one_line_error(_cfg(name="npz", path=str(tmp_path / "keys.npz")), "it has: 'inputs', 'labels'")


def test_truncated_idx(tmp_path):
    data = _idx_bytes(np.zeros((10, 4, 4), dtype=np.uint8), 0x08)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(data[:-7])
    expected = f"truncated IDX file {path}: expected {len(data)} bytes, found {len(data) - 7}"
    assert _one_line_error(_cfg(name="idx", path=str(path)), "truncated") == expected
    gz = tmp_path / "train-images-idx3-ubyte.gz"
    gz.write_bytes(gzip.compress(data)[:-20])
    _one_line_error(_cfg(name="idx", path=str(gz)), f"truncated gzip file {gz}")
    path.write_bytes(data)  # images fine, labels file missing
    _one_line_error(
        _cfg(name="idx", path=str(path)), "IDX labels file .*train-labels-idx1-ubyte does not exist"
    )


def test_bad_labels(tmp_path):
    x = np.zeros((8, 2))
    np.savez(tmp_path / "f.npz", x=x, y=np.linspace(0, 1, 8))
    _one_line_error(
        _cfg(name="npz", path=str(tmp_path / "f.npz"), task="classification"), "whole numbers"
    )
    np.savez(tmp_path / "one.npz", x=x, y=np.ones(8, dtype=int))
    _one_line_error(_cfg(name="npz", path=str(tmp_path / "one.npz")), "at least 2 classes")
    np.savez(tmp_path / "train.npz", x=x, y=np.arange(8) % 3)
    np.savez(tmp_path / "test.npz", x=x[:2], y=np.array([1, 7]))
    cfg = _cfg(name="npz", path=str(tmp_path / "train.npz"), test_path=str(tmp_path / "test.npz"))
    _one_line_error(cfg, "test label 7 is not among the 3 training classes")
    np.savez(tmp_path / "nan.npz", x=np.full((8, 2), np.nan), y=np.arange(8) % 2)
    _one_line_error(_cfg(name="npz", path=str(tmp_path / "nan.npz")), "16 NaN or infinite")
