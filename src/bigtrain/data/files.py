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
    x, y = _npz_arrays(p, [("x", "X"), ("y", "Y")], "arrays 'x' and 'y' (or 'X' and 'y')")
    if len(x) != len(y):
        raise DataError(f"{p}: x has {len(x)} examples but y has {len(y)}")
    return x, y


def _npz_arrays(p: Path, wanted: list[tuple[str, ...]], what: str) -> list[np.ndarray]:
    """The arrays of an .npz archive named by ``wanted`` (each: accepted spellings of one key).

    Never unpickles: an archive of Python objects is refused with one line, like a corrupt one.
    """
    try:
        archive = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"cannot read {p} as a NumPy .npz archive ({_npz_problem(e)})") from None
    if not isinstance(archive, np.lib.npyio.NpzFile):  # a single .npy array
        raise DataError(
            f"{p} is a single .npy array, not an .npz archive; save it with np.savez(path, x=...)"
        )
    try:
        with archive:
            keys = list(archive.files)
            found = [next((k for k in names if k in keys), None) for names in wanted]
            if None in found:
                raise DataError(
                    f"{p} must hold {what}; it has: "
                    f"{', '.join(repr(k) for k in keys) or 'no arrays'}"
                )
            return [archive[k] for k in found]
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"cannot read {p} as a NumPy .npz archive ({_npz_problem(e)})") from None


def _npz_problem(e: BaseException) -> str:
    if "allow_pickle" in str(e):
        return "it holds pickled Python objects, which bigtrain never loads; save numeric arrays"
    return _first_line(e)


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


# ----------------------------------------------------------------------------- new inputs
def read_inputs(path: str | Path, feature_names: list[str] | None, width: int) -> np.ndarray:
    """The (N, width) float32 inputs of new examples in a CSV, Parquet or .npz (key ``x``) file.

    A table with a header row is matched to the model by ``feature_names`` (in training order);
    a headerless CSV must have exactly ``width`` columns. Raises DataError naming the file on a
    missing, unreadable or empty file, a width that does not fit the model, and naming the row
    and column of the first non-numeric, NaN or infinite value.
    """
    p = existing_file(path, "input file")
    if p.suffix.lower() == ".npz":
        (raw,) = _npz_arrays(p, [("x", "X")], "an array 'x' (or 'X') of inputs")
        if raw.dtype.kind not in "biuf":
            raise DataError(f"inputs 'x' in {p} have dtype {raw.dtype}; they must be numbers")
        if raw.ndim == 0 or len(raw) == 0:
            raise DataError(f"inputs 'x' in {p} hold no examples (shape {raw.shape})")
        x = raw.reshape(len(raw), -1).astype(np.float32)  # 1-D: one feature per example
        return _checked_inputs(x, p, width, columns=None, first_line=None)
    frame, header, first_line = _read_input_table(p)
    if header:
        frame.columns = [str(c) for c in frame.columns]
    if header and feature_names:  # named columns: by name, in training order
        missing = [c for c in feature_names if c not in frame.columns]
        if missing:
            raise DataError(
                f"{p} lacks feature column '{missing[0]}' the model was trained on"
                f"{did_you_mean(missing[0], list(frame.columns))}"
            )
        frame = frame[feature_names]
    if frame.shape[1] != width:
        raise DataError(f"{p} has {frame.shape[1]} feature columns, the model takes {width}")
    names = list(frame.columns) if header else None
    import pandas as pd

    columns = []
    for j in range(frame.shape[1]):
        col = frame.iloc[:, j]
        if col.dtype.kind not in "biuf":
            values = pd.to_numeric(col, errors="coerce")
            bad = (values.isna() & col.notna()).to_numpy()
            if bad.any():
                i = int(np.flatnonzero(bad)[0])
                where = _cell(p, i, j, names, first_line)
                raise DataError(f"{where} is {str(col.iloc[i])!r:.40}, not a number")
            col = values
        columns.append(col.to_numpy(dtype=np.float32))
    x = np.stack(columns, axis=1) if columns else np.zeros((len(frame), 0), np.float32)
    return _checked_inputs(x, p, width, names, first_line)


def _read_input_table(p: Path) -> tuple[Any, bool, int | None]:
    """(DataFrame, whether it has named columns, file line of its first row: None for Parquet)."""
    try:
        import pandas as pd
    except ImportError:
        raise DataError(f"reading {p} needs pandas: pip install 'bigtrain[tables]'") from None
    if p.suffix.lower() in (".parquet", ".pq"):
        return read_table(p), True, None
    try:
        frame = pd.read_csv(p, header=None)
        # a header row has names in it; a headerless file starts with a row of numbers
        if len(frame) and pd.to_numeric(frame.iloc[0], errors="coerce").notna().all():
            return frame, False, 1
        return pd.read_csv(p), True, 2
    except pd.errors.EmptyDataError:
        raise DataError(f"input file {p} is empty") from None
    except (ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError) as e:
        raise DataError(f"cannot read {p}: {_first_line(e)}") from None


def _cell(p: Path, i: int, j: int, names: list[str] | None, line0: int | None) -> str:
    column = f"column '{names[j]}'" if names else f"column {j + 1}"
    line = f" (line {line0 + i})" if line0 is not None else ""
    return f"{p}: row {i + 1}{line}, {column}"


def _checked_inputs(
    x: np.ndarray, p: Path, width: int, columns: list[str] | None, first_line: int | None
) -> np.ndarray:
    if len(x) == 0:
        raise DataError(f"input file {p} has no rows to predict")
    if x.shape[1] != width:
        raise DataError(f"inputs in {p} have {x.shape[1]} features each, the model takes {width}")
    bad = ~np.isfinite(x)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        value = "missing or NaN" if np.isnan(x[i, j]) else "infinite"
        raise DataError(
            f"{_cell(p, i, j, columns, first_line)} is {value}; every input must be a finite "
            "number (fill or drop that row)"
        )
    return x
