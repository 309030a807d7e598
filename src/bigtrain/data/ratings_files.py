"""Reading user-item ratings: MovieLens from the dslabs R database (without R), or a CSV.

Both give :class:`Interactions` (raw ids) and the item :class:`Catalogue`, validated: a rating
that is missing or not a number, or an id that is not an integer, is a one-line DataError.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import math
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bigtrain._io import atomic_write_bytes
from bigtrain.data.ratings_config import RatingsDataConfig
from bigtrain.errors import ConfigError, DataError

#: where Debian's r-cran-dslabs puts its data, and where DSLABS_SETUP unpacks it without R
DSLABS_FOLDERS = (
    Path("/usr/lib/R/site-library/dslabs/data"),
    Path("~/.cache/bigtrain/dslabs/usr/lib/R/site-library/dslabs/data").expanduser(),
)
DSLABS_SETUP = (
    "cd /tmp && apt-get download r-cran-dslabs && "
    "dpkg -x r-cran-dslabs_*_all.deb ~/.cache/bigtrain/dslabs"
)
CACHE_ROOT = Path("~/.cache/bigtrain/ratings").expanduser()
_CACHE_VERSION = 2


@dataclass
class Catalogue:
    """Item metadata, in item-row order (row r - 1 describes item row r)."""

    item_ids: np.ndarray  # (I,) int64, sorted
    titles: list[str]
    years: np.ndarray  # (I,) int64, -1 unknown
    genres: list[list[str]]


@dataclass
class Interactions:
    """Validated ratings (raw ids) and the item catalogue."""

    users: np.ndarray  # (N,) int64
    items: np.ndarray  # (N,) int64
    ratings: np.ndarray  # (N,) float32
    timestamps: np.ndarray | None  # (N,) int64
    catalogue: Catalogue


def _dslabs_folder(path: str | None) -> Path:
    candidates = [Path(path).expanduser()] if path else list(DSLABS_FOLDERS)
    for folder in candidates:
        if (folder / "Rdata.rdb").is_file() and (folder / "Rdata.rdx").is_file():
            return folder
    where = path or " or ".join(str(f) for f in DSLABS_FOLDERS)
    raise DataError(
        f"the MovieLens ratings of r-cran-dslabs are not in {where}; install them once with: "
        f"{DSLABS_SETUP}"
    )


def _read_r_object(rdb: bytes, offset: int, length: int):
    """One record of an R lazy-load database: a 4-byte length, then a zlib stream."""
    import rdata

    record = rdb[offset : offset + length]
    (size,) = struct.unpack(">I", record[:4])
    body = zlib.decompress(record[4:])
    if len(body) != size:
        raise DataError("the dslabs database is corrupt (a record's length does not match)")
    return rdata.conversion.convert(rdata.parser.parse_data(body, extension=".rds"))


def read_movielens(path: str | None = None) -> Interactions:
    """MovieLens latest-small (100,004 ratings, 671 users, 9,066 movies) from dslabs' R database.

    The first read parses the R objects with ``rdata`` (~4 s) and caches the arrays under
    ``~/.cache/bigtrain/ratings``, keyed on the database's bytes; later reads take ~50 ms.
    """
    folder = _dslabs_folder(path)
    rdb = (folder / "Rdata.rdb").read_bytes()
    rdx = (folder / "Rdata.rdx").read_bytes()
    key = hashlib.sha256(rdx + rdb).hexdigest()[:20]
    cached = CACHE_ROOT / f"movielens-{key}-v{_CACHE_VERSION}.npz"
    if cached.is_file():
        try:
            return _from_arrays(dict(np.load(cached, allow_pickle=False)))
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    try:
        import rdata  # noqa: F401
    except ImportError:
        raise ConfigError(
            "reading MovieLens needs the rdata package: pip install 'bigtrain[recsys]'"
        ) from None
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rdata: "Unknown file type: assumed RDS"
        index = rdata.conversion.convert(rdata.parser.parse_data(gzip.decompress(rdx)))
        offset, length = (int(v) for v in index["variables"]["movielens"])
        frame = _read_r_object(rdb, offset, length)
    arrays = _frame_arrays(frame)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(cached, buffer.getvalue())
    except OSError:
        pass  # a read-only home only costs the next read its ~4 s
    return _from_arrays(arrays)


def _frame_arrays(frame) -> dict[str, np.ndarray]:
    """The dslabs data frame (movieId, title, year, genres, userId, rating, timestamp) as arrays."""
    movies = frame.drop_duplicates("movieId").sort_values("movieId")
    return {
        "users": frame["userId"].to_numpy("int64"),
        "items": frame["movieId"].to_numpy("int64"),
        "ratings": frame["rating"].to_numpy("float32"),
        "timestamps": frame["timestamp"].to_numpy("int64"),
        "item_ids": movies["movieId"].to_numpy("int64"),
        "titles": np.array([str(t) for t in movies["title"]], dtype=str),
        "years": movies["year"].fillna(-1).to_numpy("int64"),
        "genres": np.array([str(g) for g in movies["genres"]], dtype=str),
    }


def _split_genres(text: str) -> list[str]:
    return [] if text in ("", "(no genres listed)", "nan", "<NA>") else text.split("|")


def _from_arrays(a: dict[str, np.ndarray]) -> Interactions:
    catalogue = Catalogue(
        a["item_ids"], [str(t) for t in a["titles"]], a["years"],
        [_split_genres(str(g)) for g in a["genres"]],
    )  # fmt: skip
    return Interactions(a["users"], a["items"], a["ratings"], a["timestamps"], catalogue)


def _integer(value: str, column: str, line: int) -> int:
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        what = "is empty" if not text else f"is {text!r}, not an integer id"
        raise DataError(f"line {line}: column '{column}' {what}") from None


def read_ratings_csv(path: str | Path, cfg: RatingsDataConfig) -> Interactions:
    """Ratings from a CSV with integer user and item ids and numeric ratings (one per line)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"ratings file {path} does not exist")
    users, items, ratings, stamps, titles = [], [], [], [], {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        needed = [cfg.user_column, cfg.item_column, cfg.rating_column]
        if cfg.split == "temporal" and cfg.timestamp_column:
            needed.append(cfg.timestamp_column)
        missing = [c for c in needed if c not in columns]
        if missing:
            hint = " (or use data.split=random)" if cfg.timestamp_column in missing else ""
            raise DataError(
                f"{path}: no column {', '.join(repr(c) for c in missing)}{hint}; it has "
                f"{', '.join(columns) or 'no header'}"
            )
        with_time = cfg.timestamp_column in columns if cfg.timestamp_column else False
        with_title = cfg.title_column in columns if cfg.title_column else False
        for line, row in enumerate(reader, start=2):
            users.append(_integer(row[cfg.user_column] or "", cfg.user_column, line))
            item = _integer(row[cfg.item_column] or "", cfg.item_column, line)
            items.append(item)
            text = (row[cfg.rating_column] or "").strip()
            try:
                value = float(text)
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                what = "is empty" if not text else f"is {text!r}, not a number"
                raise DataError(f"{path} line {line}: column '{cfg.rating_column}' {what}")
            ratings.append(value)
            if with_time:
                stamps.append(_integer(row[cfg.timestamp_column] or "", "timestamp", line))
            if with_title:
                titles.setdefault(item, row[cfg.title_column] or "")
    if not users:
        raise DataError(f"{path} holds no ratings")
    item_ids = np.unique(np.asarray(items, dtype=np.int64))
    catalogue = Catalogue(
        item_ids, [titles.get(int(i), str(int(i))) for i in item_ids],
        np.full(len(item_ids), -1, dtype=np.int64), [[] for _ in item_ids],
    )  # fmt: skip
    return Interactions(
        np.asarray(users, dtype=np.int64), np.asarray(items, dtype=np.int64),
        np.asarray(ratings, dtype=np.float32),
        np.asarray(stamps, dtype=np.int64) if with_time else None, catalogue,
    )  # fmt: skip
