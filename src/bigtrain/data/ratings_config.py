"""RatingsDataConfig: the ``data:`` section of a recommender recipe (user-item ratings)."""

from __future__ import annotations

#: data set names read as (user, item, rating) interactions
RATINGS_DATA_NAMES = ("movielens", "ratings_csv")
