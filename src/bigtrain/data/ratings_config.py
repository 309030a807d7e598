"""RatingsDataConfig: the ``data:`` section of a recommender recipe (user-item ratings)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: data set names read as (user, item, rating) interactions
RATINGS_DATA_NAMES = ("movielens", "ratings_csv")


class RatingsDataConfig(BaseModel):
    """User-item ratings for recommenders (docs/recommenders.md).

    Attributes:
        name: ``movielens`` (the MovieLens latest-small ratings that the Debian package
            r-cran-dslabs ships) or ``ratings_csv`` (a CSV file at ``path``).
        path: ``ratings_csv``: the CSV; ``movielens``: the dslabs ``data`` folder (holding
            ``Rdata.rdb``/``Rdata.rdx``) when it is not in one of the standard places.
        user_column / item_column / rating_column / timestamp_column / title_column: CSV column
            names (integer ids, numeric ratings; the timestamp orders the temporal split).
        split: ``temporal`` holds out each user's latest ratings (by timestamp), ``random``
            holds out ratings uniformly at random.
        val_fraction / test_fraction: share of each user's ratings (temporal) or of all ratings
            (random) held out; a user keeps at least one rating for training.
        split_seed: seed of the random split (and of tie-breaking among equal timestamps).
        relevant_rating: held-out ratings at least this high are the relevant items of the
            ranking metrics, and training ratings this high are the positives of the ranking
            losses (0: every rated item).
        top_k: K of Recall@K, NDCG@K and the hit rate.
        negatives: items sampled per positive by the ranking losses (bpr, sampled_softmax).
        batch_size: ratings per training batch; ``eval_users``: users per evaluation batch.
        limit: keep only the first ``limit`` ratings in file order (tiny test runs).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Literal["movielens", "ratings_csv"]
    path: str | None = None
    user_column: str = "userId"
    item_column: str = "movieId"
    rating_column: str = "rating"
    timestamp_column: str | None = "timestamp"
    title_column: str | None = "title"
    split: Literal["temporal", "random"] = "temporal"
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    split_seed: int = 0
    relevant_rating: float = Field(4.0, ge=0.0)
    top_k: int = Field(10, ge=1)
    negatives: int = Field(4, ge=1)
    batch_size: int = Field(1024, ge=1)
    eval_users: int = Field(256, ge=1)
    shuffle: bool = True
    drop_last: bool = False
    limit: int | None = Field(None, ge=10)

    @model_validator(mode="after")
    def _check(self) -> RatingsDataConfig:
        if self.name == "ratings_csv" and not self.path:
            raise ValueError("data.name 'ratings_csv' needs data.path (the CSV of ratings)")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"data.val_fraction + data.test_fraction must be below 1 (got "
                f"{self.val_fraction} + {self.test_fraction})"
            )
        return self
