"""User-item ratings for recommenders: splits that mean something for recommenders, id
indexing with a cold-start row, evaluation batches and the classic baselines (reading is in
``ratings_files``).

Users and items are indexed over everything the data holds (row 0 of each table stands for an
id the data never had): an item rated only in the held-out splits keeps its row, which no
training example touches, so a model scores it from its biases or features alone (cold start).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from bigtrain.data.ratings_config import RatingsDataConfig
from bigtrain.data.ratings_files import (
    DSLABS_FOLDERS,
    DSLABS_SETUP,
    Catalogue,
    Interactions,
    read_movielens,
    read_ratings_csv,
)
from bigtrain.data.tables import Split
from bigtrain.errors import DataError

__all__ = ["DSLABS_FOLDERS", "DSLABS_SETUP", "RatingsData", "load_ratings", "read_ratings_csv"]

# Koren (2010), "Factor in the neighbors", section 2.1: shrinkage of the baseline biases
ITEM_BIAS_SHRINK, USER_BIAS_SHRINK = 25.0, 10.0
YEAR_BUCKET = 5  # years per bucket of the two-tower model's release-year feature


@dataclass
class Baselines:
    """The global mean and Koren's shrunk user/item biases, fitted on the training ratings."""

    global_mean: float
    user_bias: torch.Tensor  # (U + 1,)
    item_bias: torch.Tensor  # (I + 1,)


@dataclass
class RatingsData:
    """Indexed splits and what models, tasks and ``predict`` need to know about them.

    ``train`` is a Split with ``x`` = (N, 2) int64 (user row, item row) and ``y`` = ratings;
    ``val``/``test`` are evaluation batches (``eval_batches``). ``seen`` maps a user row to the
    item rows that user rated in train (``seen_with_val`` adds validation, masked for test).
    """

    train: Split
    val: list[dict] | None
    test: list[dict] | None
    user_ids: np.ndarray  # row r - 1 -> raw user id
    catalogue: Catalogue
    genre_names: list[str]
    item_genres: torch.Tensor  # (I + 1, G) float multi-hot
    item_year_bucket: torch.Tensor  # (I + 1,) int64, 0 = unknown year
    n_year_buckets: int
    baselines: Baselines
    popularity: torch.Tensor  # (I + 1,) training positives per item
    warm_items: torch.Tensor  # item rows with at least one training rating
    rated: dict[int, np.ndarray] = field(default_factory=dict)  # user row -> every rated item
    kind: str = "ratings"
    input_shape: tuple[int, ...] = (2,)
    num_outputs: int = 1

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.catalogue.item_ids)

    def user_row(self, user_id: int) -> int:
        """Row of a raw user id, 0 when the data never had it."""
        i = int(np.searchsorted(self.user_ids, user_id))
        return i + 1 if i < len(self.user_ids) and self.user_ids[i] == user_id else 0

    def item_rows(self, item_ids: np.ndarray) -> np.ndarray:
        """Rows of raw item ids, 0 for ids the data never had."""
        ids = self.catalogue.item_ids
        i = np.searchsorted(ids, item_ids).clip(max=len(ids) - 1)
        return np.where(ids[i] == item_ids, i + 1, 0)


# ---------------------------------------------------------------------------- splits
def split_ratings(
    users: np.ndarray,
    timestamps: np.ndarray | None,
    how: str,
    val_fraction: float,
    test_fraction: float,
    seed: int = 0,
) -> np.ndarray:
    """Which split each rating goes to: 0 train, 1 val, 2 test.

    ``temporal``: each user's latest ``floor(n * test_fraction)`` ratings are test and the
    ``floor(n * val_fraction)`` before them val (ties in time broken by a seeded shuffle).
    ``random``: a seeded uniform split of all ratings. Either way every user keeps at least one
    training rating (a random split gives a user left without one back their earliest).
    """
    n = len(users)
    gen = np.random.default_rng(seed)
    tiebreak = gen.permutation(n)
    if how == "temporal":
        if timestamps is None:
            raise DataError("data.split 'temporal' needs timestamps; use data.split=random")
        order = np.lexsort((tiebreak, timestamps, users))
        sorted_users = users[order]
        starts = np.flatnonzero(np.r_[True, sorted_users[1:] != sorted_users[:-1]])
        counts = np.diff(np.r_[starts, n])
        per_user = np.repeat(counts, counts)
        rank = np.arange(n) - np.repeat(starts, counts)
        from_end = per_user - 1 - rank
        n_test = np.floor(per_user * test_fraction).astype(np.int64)
        n_val = np.floor(per_user * val_fraction).astype(np.int64)
        room = np.maximum(per_user - 1, 0)  # at least one rating stays in train
        n_test = np.minimum(n_test, room)
        n_val = np.minimum(n_val, room - n_test)
        which = np.zeros(n, dtype=np.int8)
        which[order[from_end < n_test + n_val]] = 1
        which[order[from_end < n_test]] = 2
        return which
    which = np.zeros(n, dtype=np.int8)
    n_test, n_val = int(n * test_fraction), int(n * val_fraction)
    which[tiebreak[:n_test]] = 2
    which[tiebreak[n_test : n_test + n_val]] = 1
    in_train = np.zeros(int(users.max()) + 1 if n else 1, dtype=bool)
    in_train[users[which == 0]] = True
    for u in np.unique(users[~in_train[users]]):
        first = np.flatnonzero(users == u)
        which[first[0] if timestamps is None else first[np.argmin(timestamps[first])]] = 0
    return which


# ---------------------------------------------------------------------------- indexing
def fit_baselines(
    user_rows: np.ndarray, item_rows: np.ndarray, ratings: np.ndarray, n_users: int, n_items: int
) -> Baselines:
    """Global mean, then shrunk item biases, then shrunk user biases (Koren 2010, eq. 2-3)."""
    mu = float(ratings.mean())
    residual = ratings - mu
    counts = np.bincount(item_rows, minlength=n_items + 1)
    item_bias = np.bincount(item_rows, residual, n_items + 1) / (ITEM_BIAS_SHRINK + counts)
    residual = residual - item_bias[item_rows]
    counts = np.bincount(user_rows, minlength=n_users + 1)
    user_bias = np.bincount(user_rows, residual, n_users + 1) / (USER_BIAS_SHRINK + counts)
    return Baselines(
        mu,
        torch.tensor(user_bias, dtype=torch.float32),
        torch.tensor(item_bias, dtype=torch.float32),
    )


def _by_user(user_rows: np.ndarray, item_rows: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(user_rows, kind="stable")
    u, i = user_rows[order], item_rows[order]
    cuts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]])
    return {int(u[c]): i[c:e] for c, e in zip(cuts, np.r_[cuts[1:], len(u)])} if len(u) else {}


def eval_batches(
    user_rows: np.ndarray,
    item_rows: np.ndarray,
    ratings: np.ndarray,
    masked: dict[int, np.ndarray],
    relevant_rating: float,
    users_per_batch: int,
) -> list[dict]:
    """Evaluation batches of held-out ratings, ``users_per_batch`` users each.

    Each batch holds ``users`` (rows), the held-out pairs (``pair_row`` indexes ``users``,
    ``pair_item``, ``rating``), the items to mask when ranking (``mask_row``, ``mask_item``: what
    each user already rated in the earlier splits) and the relevant held-out items
    (``rel_row``, ``rel_item``: rating >= ``relevant_rating``).
    """
    held = _by_user(user_rows, np.arange(len(user_rows)))
    users = np.array(sorted(held), dtype=np.int64)
    batches = []
    for start in range(0, len(users), users_per_batch):
        chunk = users[start : start + users_per_batch]
        pairs = np.concatenate([held[int(u)] for u in chunk])
        position = {int(u): k for k, u in enumerate(chunk)}
        pair_row = np.array([position[int(u)] for u in user_rows[pairs]], dtype=np.int64)
        mask_items = [masked.get(int(u), np.zeros(0, np.int64)) for u in chunk]
        mask_row = np.repeat(np.arange(len(chunk)), [len(m) for m in mask_items])
        relevant = ratings[pairs] >= relevant_rating
        batches.append({
            "users": torch.from_numpy(chunk),
            "pair_row": torch.from_numpy(pair_row),
            "pair_item": torch.from_numpy(item_rows[pairs].astype(np.int64)),
            "rating": torch.from_numpy(ratings[pairs].astype(np.float32)),
            "mask_row": torch.from_numpy(mask_row.astype(np.int64)),
            "mask_item": torch.from_numpy(np.concatenate(mask_items).astype(np.int64)),
            "rel_row": torch.from_numpy(pair_row[relevant]),
            "rel_item": torch.from_numpy(item_rows[pairs][relevant].astype(np.int64)),
        })  # fmt: skip
    return batches


def _item_features(catalogue: Catalogue) -> tuple[list[str], torch.Tensor, torch.Tensor, int]:
    names = sorted({g for gs in catalogue.genres for g in gs})
    column = {g: k for k, g in enumerate(names)}
    multi_hot = torch.zeros(len(catalogue.item_ids) + 1, max(len(names), 1))
    for row, gs in enumerate(catalogue.genres, start=1):
        for g in gs:
            multi_hot[row, column[g]] = 1.0
    years = catalogue.years
    known = years >= 0
    buckets = np.zeros(len(years) + 1, dtype=np.int64)
    if known.any():
        buckets[1:][known] = (years[known] - years[known].min()) // YEAR_BUCKET + 1
    return names, multi_hot, torch.from_numpy(buckets), int(buckets.max()) + 1


def load_ratings(cfg: RatingsDataConfig) -> RatingsData:
    """Read, validate, split and index the recipe's ratings."""
    data = read_movielens(cfg.path) if cfg.name == "movielens" else read_ratings_csv(cfg.path, cfg)
    if cfg.limit is not None:
        keep = slice(0, cfg.limit)
        stamps = data.timestamps[keep] if data.timestamps is not None else None
        data = Interactions(
            data.users[keep], data.items[keep], data.ratings[keep], stamps, data.catalogue
        )
    user_ids = np.unique(data.users)
    user_rows = np.searchsorted(user_ids, data.users) + 1
    item_rows = np.searchsorted(data.catalogue.item_ids, data.items) + 1
    which = split_ratings(
        data.users, data.timestamps, cfg.split, cfg.val_fraction, cfg.test_fraction,
        cfg.split_seed,
    )  # fmt: skip
    n_users, n_items = len(user_ids), len(data.catalogue.item_ids)
    tr = which == 0
    baselines = fit_baselines(user_rows[tr], item_rows[tr], data.ratings[tr], n_users, n_items)
    positive = tr & (data.ratings >= cfg.relevant_rating)
    popularity = torch.from_numpy(
        np.bincount(item_rows[positive], minlength=n_items + 1).astype(np.float32)
    )
    seen_train = _by_user(user_rows[tr], item_rows[tr])
    before_test = _by_user(user_rows[which < 2], item_rows[which < 2])

    def held_out(split: int, masked: dict[int, np.ndarray]) -> list[dict] | None:
        sel = which == split
        if not sel.any():
            return None
        return eval_batches(
            user_rows[sel], item_rows[sel], data.ratings[sel], masked, cfg.relevant_rating,
            cfg.eval_users,
        )  # fmt: skip

    x = torch.from_numpy(np.stack([user_rows[tr], item_rows[tr]], axis=1).astype(np.int64))
    names, genres, year_bucket, n_buckets = _item_features(data.catalogue)
    return RatingsData(
        train=Split(x, torch.from_numpy(data.ratings[tr].astype(np.float32))),
        val=held_out(1, seen_train),
        test=held_out(2, before_test),
        user_ids=user_ids,
        catalogue=data.catalogue,
        genre_names=names,
        item_genres=genres,
        item_year_bucket=year_bucket,
        n_year_buckets=n_buckets,
        baselines=baselines,
        popularity=popularity,
        warm_items=torch.from_numpy(np.unique(item_rows[tr]).astype(np.int64)),
        rated=_by_user(user_rows, item_rows),
    )
