"""Readers for the user's files: CSV and Parquet tables, NumPy .npz archives and IDX arrays.

Every reader raises DataError with one line naming the file on a missing, corrupt or truncated
file, so a typo in a recipe never ends in a traceback from pandas or numpy.
"""

from __future__ import annotations

import gzip
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from bigtrain.errors import DataError, did_you_mean

# IDX type codes (http://yann.lecun.com/exdb/mnist/): data are big-endian
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def existing_file(path: str | Path, what: str = "data file") -> Path:
    """``path`` as a Path, or DataError when no such file exists."""
    p = Path(path).expanduser()
    if not p.is_file():
        where = "is a folder, not a file" if p.is_dir() else "does not exist"
        raise DataError(f"{what} {p} {where}")
    return p


# ----------------------------------------------------------------------------- tables
def read_table(path: str | Path) -> Any:
    """Read a CSV or Parquet file (by extension; anything else is read as CSV) into a DataFrame."""
    p = existing_file(path)
    try:
        import pandas as pd
    except ImportError:
        raise DataError(f"reading {p} needs pandas: pip install 'bigtrain[tables]'") from None
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(p)
        return pd.read_csv(p)
    except ImportError:
        raise DataError(f"reading {p} needs pyarrow: pip install 'bigtrain[tables]'") from None
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(f"cannot read table {p}: {first}") from None


def table_arrays(
    df: Any, target: str, features: list[str] | None, path: str | Path
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Split a DataFrame into float32 features, raw targets and the feature names.

    Raises DataError naming the column when the target or a feature is missing, a feature is not
    numeric, or a value is missing.
    """
    columns = [str(c) for c in df.columns]
    df.columns = columns
    if target not in columns:
        raise DataError(
            f"target column '{target}' not found in {path}{did_you_mean(target, columns)}; "
            f"columns: {_short_list(columns)}"
        )
    names = list(features) if features is not None else [c for c in columns if c != target]
    for name in names:
        if name not in columns:
            raise DataError(
                f"feature column '{name}' not found in {path}{did_you_mean(name, columns)}; "
                f"columns: {_short_list(columns)}"
            )
    if not names:
        raise DataError(f"{path} has no feature columns besides the target '{target}'")
    for name in names:
        col = df[name]
        if col.dtype.kind not in "biuf":
            example = col.dropna().iloc[0] if col.notna().any() else None
            raise DataError(
                f"feature column '{name}' in {path} is not numeric (dtype {col.dtype}, e.g. "
                f"{example!r:.40}); encode it as numbers or leave it out with data.features"
            )
        missing = int(col.isna().sum())
        if missing:
            raise DataError(f"feature column '{name}' in {path} has {missing} missing values")
    y_col = df[target]
    if int(y_col.isna().sum()):
        raise DataError(
            f"target column '{target}' in {path} has {int(y_col.isna().sum())} missing values"
        )
    x = df[names].to_numpy(dtype=np.float32)
    y = y_col.to_numpy()
    if y.dtype.kind not in "biufUO":
        y = y.astype(str)  # categoricals and pandas string arrays: labels by name
    return x, y, names


def _short_list(items: list[str], n: int = 12) -> str:
    head = ", ".join(items[:n])
    return head + (f", ... ({len(items)} in all)" if len(items) > n else "")


# ----------------------------------------------------------------------------- npz
def read_npz(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read arrays ``x`` and ``y`` (or ``X`` and ``y``/``Y``) from a NumPy ``.npz`` file."""
    p = existing_file(path)
    try:
        with np.load(p, allow_pickle=False) as archive:
            keys = list(archive.files)
            xk = next((k for k in ("x", "X") if k in keys), None)
            yk = next((k for k in ("y", "Y") if k in keys), None)
            if xk is None or yk is None:
                raise DataError(
                    f"{p} must hold arrays 'x' and 'y' (or 'X' and 'y'); it has: "
                    f"{', '.join(repr(k) for k in keys) or 'no arrays'}"
                )
            x, y = archive[xk], archive[yk]
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"cannot read {p} as a NumPy .npz archive ({_first_line(e)})") from None
    if len(x) != len(y):
        raise DataError(f"{p}: x has {len(x)} examples but y has {len(y)}")
    return x, y


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


# ----------------------------------------------------------------------------- IDX
def read_idx(path: str | Path, mmap: bool = False) -> np.ndarray:
    """Read an IDX array (the MNIST format); ``.gz`` files are decompressed transparently.

    With ``mmap=True`` an uncompressed file is memory-mapped (read-only, big-endian dtype) instead
    of read, for data larger than memory. Otherwise the array is returned in native byte order.
    """
    p = existing_file(path, "IDX file")
    with open(p, "rb") as f:
        head = f.read(4 + 4 * 255)  # the longest possible header
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(p, "rb") as f:
                data: bytes | None = f.read()
        except EOFError:
            raise DataError(
                f"truncated gzip file {p}: it ends before the end of the data"
            ) from None
        except (OSError, zlib.error) as e:
            raise DataError(f"cannot decompress {p} ({_first_line(e)})") from None
        head, size = data[: 4 + 4 * 255], len(data)
    else:
        data, size = None, p.stat().st_size
    if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] not in IDX_DTYPES or head[3] == 0:
        raise DataError(f"{p} is not an IDX file (bad header {head[:4].hex() or 'empty'})")
    ndim, offset = head[3], 4 + 4 * head[3]
    if len(head) < offset:
        raise DataError(
            f"truncated IDX file {p}: expected a {offset}-byte header, found {len(head)}"
        )
    dims = struct.unpack(f">{ndim}I", head[4:offset])
    dtype = np.dtype(IDX_DTYPES[head[2]])
    expected = offset + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if size < expected:
        raise DataError(f"truncated IDX file {p}: expected {expected} bytes, found {size}")
    if size > expected:
        raise DataError(
            f"IDX file {p} has {size - expected} bytes after its data (expected {expected})"
        )
    if data is not None:
        arr = np.frombuffer(data, dtype=dtype, offset=offset).reshape(dims)
    elif mmap:
        return np.memmap(p, dtype=dtype, mode="r", offset=offset, shape=dims)
    else:
        arr = np.fromfile(p, dtype=dtype, offset=offset).reshape(dims)
    # native byte order so torch can take the array; one-byte types have no order
    return arr.astype(dtype.newbyteorder("="), copy=False) if dtype.itemsize > 1 else arr


def idx_labels_path(images: Path) -> Path:
    """The labels file that goes with an IDX images file (``train-images-idx3-ubyte`` ->
    ``train-labels-idx1-ubyte``, keeping a ``.gz``)."""
    name = images.name
    for old, new in (("images-idx3", "labels-idx1"), ("images-idx4", "labels-idx1")):
        name = name.replace(old, new)
    if name == images.name:
        name = images.name.replace("images", "labels")
    if name == images.name:
        raise DataError(
            f"cannot tell the labels file of IDX images {images}: name it like "
            "'train-images-idx3-ubyte' so that 'train-labels-idx1-ubyte' sits beside it"
        )
    return images.with_name(name)


def find_idx_pair(folder: Path, stem: str) -> Path | None:
    """``folder/<stem>-images-idx3-ubyte`` (or ``.gz``) when it exists."""
    for suffix in ("", ".gz"):
        candidate = folder / f"{stem}-images-idx3-ubyte{suffix}"
        if candidate.is_file():
            return candidate
    return None


def read_idx_pair(images: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read IDX images and their labels file; check that the counts agree."""
    images = Path(images)
    x = read_idx(images)
    labels_path = idx_labels_path(images)
    y = read_idx(existing_file(labels_path, "IDX labels file"))
    if y.ndim != 1 or len(y) != len(x):
        raise DataError(
            f"IDX labels {labels_path} have shape {y.shape}; expected ({len(x)},) to match {images}"
        )
    return x, y
