"""Recommenders over embedding tables: matrix factorisation and a two-tower model.

Both score (user row, item row) pairs, ``x`` of shape (B, 2) int64, and score every item for a
batch of users (``score_all``, for ranking). Row 0 of every table is the padding row (ids the
data never had) and stays zero. ``n_users``/``n_items`` (and the two-tower's feature sizes)
come from the data: the builder fills them in.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class MatrixFactorizationConfig:
    """Recipe keys of ``model: {name: mf, ...}``.

    Attributes:
        dim: latent factors per user and item (0: the user + item bias model alone).
        biases: learn a bias per user and per item on top of the global mean.
        sparse: sparse gradients for the tables (optim.name sparse_adam, adagrad or sgd).
        init_std: standard deviation of the initial factors.
        embedding_l2: L2 penalty on the rows a batch looks up (the classic MF regulariser,
            lambda * (|p_u|^2 + |q_i|^2 + b_u^2 + b_i^2), averaged over the batch).
        n_users / n_items: table sizes, filled in from the data.
    """

    dim: int = 32
    biases: bool = True
    sparse: bool = False
    init_std: float = 0.05
    embedding_l2: float = 0.0
    n_users: int = 0
    n_items: int = 0

    def __post_init__(self) -> None:
        if self.dim < 0:
            raise ValueError(f"dim: must be >= 0, got {self.dim}")
        if self.dim == 0 and not self.biases:
            raise ValueError("dim: 0 with biases false leaves nothing to learn")
        if self.embedding_l2 < 0:
            raise ValueError(f"embedding_l2: must be >= 0, got {self.embedding_l2}")


def _table(rows: int, dim: int, sparse: bool, std: float) -> nn.Embedding:
    table = nn.Embedding(rows + 1, dim, padding_idx=0, sparse=sparse)
    with torch.no_grad():
        if std:
            table.weight.normal_(0.0, std)
        else:
            table.weight.zero_()
        table.weight[0].zero_()
    return table


class _Recommender(nn.Module):
    """What both models share: score = mu + b_u + b_i + user_vector . item_vector, over the
    subclass's id tables and vectors; the global mean, zeroed cold rows, the row penalty."""

    cfg: MatrixFactorizationConfig | TwoTowerConfig

    def _init_biases(self, n_users: int, n_items: int, biases: bool, sparse: bool) -> None:
        self.user_bias = _table(n_users, 1, sparse, 0.0) if biases else None
        self.item_bias = _table(n_items, 1, sparse, 0.0) if biases else None
        # the training ratings' mean (set by the builder; 0 for ranking): scores start there
        self.register_buffer("global_mean", torch.zeros(()))

    def id_tables(self) -> tuple[nn.Embedding, nn.Embedding]:
        raise NotImplementedError

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def bias(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """mu + b_u + b_i for pairs (any matching shapes)."""
        out = self.global_mean.expand(users.shape)
        if self.user_bias is not None:
            out = out + self.user_bias(users).squeeze(-1) + self.item_bias(items).squeeze(-1)
        return out

    def row_squares(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """|row|^2 of the id-table rows each pair looks up: what ``embedding_l2`` penalises."""
        user_table, item_table = self.id_tables()
        return user_table(users).pow(2).sum(-1) + item_table(items).pow(2).sum(-1)

    def zero_rows(self, users: torch.Tensor, items: torch.Tensor) -> None:
        """Zero the rows of users/items no training example touches: they keep no random
        factors, so their scores come from biases and features alone (the cold-start policy;
        zero rows get zero gradients, so they stay zero)."""
        user_table, item_table = self.id_tables()
        with torch.no_grad():
            for table, rows in ((user_table, users), (item_table, items)):
                table.weight[rows] = 0.0
            if self.user_bias is not None:
                self.user_bias.weight[users] = 0.0
                self.item_bias.weight[items] = 0.0

    def forward(
        self, x: torch.Tensor, with_penalty: bool = False
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Scores of (user row, item row) pairs x (B, 2): (B,); with the row penalty if asked."""
        users, items = x[..., 0], x[..., 1]  # (B,), (B,)
        u, v = self.user_vectors(users), self.item_vectors(items)  # (B, dim)
        score = self.bias(users, items) + (u * v).sum(-1)  # (B,)
        if not with_penalty:
            return score
        return score, self.cfg.embedding_l2 * self.row_squares(users, items).mean()

    def score_all(self, users: torch.Tensor) -> torch.Tensor:
        """Scores of every item row for ``users`` (U,): (U, n_items + 1)."""
        items = torch.arange(self.cfg.n_items + 1, device=users.device)
        scores = self.user_vectors(users) @ self.item_vectors(items).T  # (U, I + 1)
        bias = self.global_mean.expand(len(users))[:, None]
        if self.user_bias is not None:  # (mu + b_u) + b_i: the order of ``bias``
            bias = bias + self.user_bias.weight[users] + self.item_bias.weight[:, 0][None, :]
        return bias + scores


class MatrixFactorization(_Recommender):
    """r(u, i) = mu + b_u + b_i + p_u . q_i (Koren, Bell and Volinsky, 2009)."""

    Config = MatrixFactorizationConfig

    def __init__(self, cfg: MatrixFactorizationConfig) -> None:
        super().__init__()
        if cfg.n_users < 1 or cfg.n_items < 1:
            raise ValueError("n_users/n_items come from the data and must be >= 1")
        self.cfg = cfg
        self.user_factors = _table(cfg.n_users, cfg.dim, cfg.sparse, cfg.init_std)
        self.item_factors = _table(cfg.n_items, cfg.dim, cfg.sparse, cfg.init_std)
        self._init_biases(cfg.n_users, cfg.n_items, cfg.biases, cfg.sparse)

    @classmethod
    def from_config(
        cls, cfg: MatrixFactorizationConfig, input_shape: tuple[int, ...], num_outputs: int
    ) -> MatrixFactorization:
        return cls(cfg)

    def id_tables(self) -> tuple[nn.Embedding, nn.Embedding]:
        return self.user_factors, self.item_factors

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_factors(users)  # p_u

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        return self.item_factors(items)  # q_i

    def row_squares(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        squares = super().row_squares(users, items)  # the classic MF penalty has the biases too
        if self.user_bias is not None:
            squares = squares + self.user_bias(users).squeeze(-1) ** 2
            squares = squares + self.item_bias(items).squeeze(-1) ** 2
        return squares


@dataclass
class TwoTowerConfig:
    """Recipe keys of ``model: {name: two_tower, ...}``.

    Attributes:
        dim: size of the user and item vectors.
        hidden: hidden layer widths of each tower's MLP (empty: the sum of embeddings as is).
        features: add the item's genres (multi-hot, linear) and release year (5-year buckets,
            an embedding) to its id embedding, so unseen items are scored from features.
        biases / sparse / init_std: as for ``mf``.
        embedding_l2: L2 penalty on the id-embedding rows a batch looks up (not the biases).
        n_users, n_items, n_genres, n_year_buckets: filled in from the data.
    """

    dim: int = 32
    hidden: list[int] = field(default_factory=list)
    features: bool = True
    biases: bool = True
    sparse: bool = False
    init_std: float = 0.05
    embedding_l2: float = 0.0
    n_users: int = 0
    n_items: int = 0
    n_genres: int = 0
    n_year_buckets: int = 0

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim: must be >= 1, got {self.dim}")
        if any(h < 1 for h in self.hidden):
            raise ValueError(f"hidden: widths must be >= 1, got {self.hidden}")


def _tower(dim: int, hidden: list[int]) -> nn.Module:
    layers: list[nn.Module] = []
    width = dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    if hidden:
        layers.append(nn.Linear(width, dim))
    return nn.Sequential(*layers)


class TwoTower(_Recommender):
    """score(u, i) = f(user u) . g(item i, genres, year) + mu + b_u + b_i (Yi et al., 2019;
    the dot-product scoring of neural collaborative filtering without its MLP head, which
    Rendle et al. (2020) found no better than the dot product)."""

    Config = TwoTowerConfig

    def __init__(self, cfg: TwoTowerConfig) -> None:
        super().__init__()
        if cfg.n_users < 1 or cfg.n_items < 1:
            raise ValueError("n_users/n_items come from the data and must be >= 1")
        self.cfg = cfg
        self.user_embedding = _table(cfg.n_users, cfg.dim, cfg.sparse, cfg.init_std)
        self.item_embedding = _table(cfg.n_items, cfg.dim, cfg.sparse, cfg.init_std)
        self._init_biases(cfg.n_users, cfg.n_items, cfg.biases, cfg.sparse)
        self.user_tower, self.item_tower = _tower(cfg.dim, cfg.hidden), _tower(cfg.dim, cfg.hidden)
        if cfg.features:
            self.genre_projection = nn.Linear(max(cfg.n_genres, 1), cfg.dim, bias=False)
            nn.init.normal_(self.genre_projection.weight, 0.0, cfg.init_std)
            self.year_embedding = nn.Embedding(max(cfg.n_year_buckets, 1), cfg.dim)
            nn.init.normal_(self.year_embedding.weight, 0.0, cfg.init_std)
        # item features are data, not weights: set by the builder, not saved in checkpoints
        self.register_buffer("item_genres", torch.zeros(cfg.n_items + 1, max(cfg.n_genres, 1)),
                             persistent=False)  # fmt: skip
        self.register_buffer("item_year", torch.zeros(cfg.n_items + 1, dtype=torch.long),
                             persistent=False)  # fmt: skip

    @classmethod
    def from_config(
        cls, cfg: TwoTowerConfig, input_shape: tuple[int, ...], num_outputs: int
    ) -> TwoTower:
        return cls(cfg)

    def set_item_features(self, genres: torch.Tensor, year_bucket: torch.Tensor) -> None:
        """Genre multi-hot (n_items + 1, n_genres) and year bucket (n_items + 1,) per item row."""
        self.item_genres.copy_(genres)
        self.item_year.copy_(year_bucket)

    def id_tables(self) -> tuple[nn.Embedding, nn.Embedding]:
        return self.user_embedding, self.item_embedding

    def user_vectors(self, users: torch.Tensor) -> torch.Tensor:
        return self.user_tower(self.user_embedding(users))  # (..., dim)

    def item_vectors(self, items: torch.Tensor) -> torch.Tensor:
        v = self.item_embedding(items)  # (..., dim)
        if self.cfg.features:
            v = v + self.genre_projection(self.item_genres[items])
            v = v + self.year_embedding(self.item_year[items])
        return self.item_tower(v)
