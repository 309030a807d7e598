"""Recommender pieces against hand computations: splits, baselines, models, ranking metrics,
cold start, sparse updates, and the CSV reader's errors."""

import math

import numpy as np
import pytest
import torch

from bigtrain.data.ratings import (
    ITEM_BIAS_SHRINK,
    USER_BIAS_SHRINK,
    eval_batches,
    fit_baselines,
    read_ratings_csv,
    split_ratings,
)
from bigtrain.data.ratings_config import RatingsDataConfig
from bigtrain.errors import DataError
from bigtrain.models.recommender import (
    MatrixFactorization,
    MatrixFactorizationConfig,
    TwoTower,
    TwoTowerConfig,
)
from bigtrain.tasks.recommendation import RankingTask, RecommenderPriors, _ranking_inputs


def test_temporal_split_holds_out_each_users_latest_ratings():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(1, 6), [20, 10, 3, 1, 7])
    stamps = rng.integers(0, 10_000, len(users))
    which = split_ratings(users, stamps, "temporal", 0.2, 0.2)
    for u in np.unique(users):
        mine = users == u
        n = mine.sum()
        split, t = which[mine], stamps[mine]
        assert (split == 0).sum() >= 1  # every user keeps a training rating
        n_test = min(math.floor(n * 0.2), n - 1)
        assert (split == 2).sum() == n_test
        if (split == 2).any() and (split < 2).any():
            assert t[split == 2].min() >= t[split < 2].max()  # test is the latest
        if (split == 1).any():
            assert t[split == 1].min() >= t[split == 0].max()


def test_random_split_keeps_every_user_in_train():
    users = np.repeat(np.arange(1, 41), 2)
    which = split_ratings(users, None, "random", 0.3, 0.3, seed=3)
    assert set(users[which == 0]) == set(users)
    assert 0 < (which == 2).sum() < len(users) * 0.3 + 1


def test_baselines_match_korens_formula():
    rng = np.random.default_rng(1)
    u, i = rng.integers(1, 6, 200), rng.integers(1, 9, 200)
    r = rng.integers(1, 6, 200).astype(np.float32)
    b = fit_baselines(u, i, r, 5, 8)
    mu = r.mean()
    for item in range(1, 9):
        sel = i == item
        expected = (r[sel] - mu).sum() / (ITEM_BIAS_SHRINK + sel.sum())
        assert float(b.item_bias[item]) == pytest.approx(expected, abs=1e-5)
    for user in range(1, 6):
        sel = u == user
        resid = r[sel] - mu - b.item_bias.numpy()[i[sel]]
        assert float(b.user_bias[user]) == pytest.approx(
            resid.sum() / (USER_BIAS_SHRINK + sel.sum()), abs=1e-5
        )


def test_matrix_factorization_is_mu_plus_biases_plus_dot():
    m = MatrixFactorization(MatrixFactorizationConfig(dim=4, n_users=5, n_items=7))
    with torch.no_grad():
        m.global_mean.fill_(3.5)
        m.user_bias.weight.normal_()
        m.item_bias.weight.normal_()
    x = torch.tensor([[1, 2], [5, 7], [3, 1]])
    got = m(x)
    for k, (u, i) in enumerate(x.tolist()):
        want = 3.5 + m.user_bias.weight[u, 0] + m.item_bias.weight[i, 0]
        want = want + m.user_factors.weight[u] @ m.item_factors.weight[i]
        assert got[k].item() == pytest.approx(want.item(), rel=1e-5)
    all_items = m.score_all(torch.tensor([3]))
    pairs = torch.stack([torch.full((8,), 3), torch.arange(8)], 1)
    torch.testing.assert_close(all_items[0], m(pairs))


def test_two_tower_score_all_equals_pair_scores_and_uses_features():
    cfg = TwoTowerConfig(dim=6, hidden=[8], n_users=4, n_items=5, n_genres=3, n_year_buckets=4)
    m = TwoTower(cfg)
    genres = torch.zeros(6, 3)
    genres[1:, :] = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1])]
    m.set_item_features(genres, torch.tensor([0, 1, 2, 3, 1, 2]))
    users = torch.tensor([1, 4])
    scores = m.score_all(users)
    for row, u in enumerate(users.tolist()):
        pairs = torch.stack([torch.full((6,), u), torch.arange(6)], 1)
        torch.testing.assert_close(scores[row], m(pairs))
    # a cold item (zeroed id row) is still scored from its genres and year
    m.zero_rows(torch.tensor([], dtype=torch.long), torch.tensor([2, 3]))
    s = m(torch.tensor([[1, 2], [1, 3]]))
    assert s[0] != s[1]


def test_cold_rows_fall_back_to_biases():
    m = MatrixFactorization(MatrixFactorizationConfig(dim=4, n_users=3, n_items=3))
    with torch.no_grad():
        m.global_mean.fill_(3.0)
        m.user_bias.weight[2] = 0.5
    m.zero_rows(torch.tensor([], dtype=torch.long), torch.tensor([3]))
    assert m(torch.tensor([[2, 3]])).item() == pytest.approx(3.5)  # mu + b_u: item bias 0
    assert m(torch.tensor([[0, 0]])).item() == pytest.approx(3.0)  # unknown ids: the mean


def brute_force(scores, relevant, masked, k):
    """NDCG@k, recall@k and hit rate over every item, from their definitions."""
    ndcg, recall, hit = [], [], []
    for u in range(len(scores)):
        if not relevant[u]:
            continue
        s = scores[u].clone()
        s[0] = -math.inf
        s[list(masked[u])] = -math.inf
        top = s.topk(k).indices.tolist()
        gains = [1.0 if i in relevant[u] else 0.0 for i in top]
        dcg = sum(g / math.log2(r + 2) for r, g in enumerate(gains))
        ideal = sum(1 / math.log2(r + 2) for r in range(min(k, len(relevant[u]))))
        ndcg.append(dcg / ideal)
        recall.append(sum(gains) / len(relevant[u]))
        hit.append(float(sum(gains) > 0))
    return np.mean(ndcg), np.mean(recall), np.mean(hit)


def test_ranking_metrics_equal_scoring_every_item():
    torch.manual_seed(0)
    n_users, n_items, k = 12, 30, 5
    scores = torch.randn(n_users, n_items + 1)
    rng = np.random.default_rng(0)
    masked = [set(rng.choice(np.arange(1, n_items + 1), 6, replace=False)) for _ in range(n_users)]
    free = [sorted(set(range(1, n_items + 1)) - m) for m in masked]
    relevant = [set(rng.choice(f, rng.integers(0, 5), replace=False)) for f in free]
    rows_m = [u for u in range(n_users) for _ in masked[u]]
    rows_r = [u for u in range(n_users) for _ in relevant[u]]
    batch = {
        "users": torch.arange(100, 100 + n_users),
        "mask_row": torch.tensor(rows_m), "mask_item": torch.tensor([i for m in masked for i in m]),
        "rel_row": torch.tensor(rows_r, dtype=torch.long),
        "rel_item": torch.tensor([i for r in relevant for i in r], dtype=torch.long),
    }  # fmt: skip
    priors = RecommenderPriors(0.0, torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.ones(1))
    task = RankingTask(priors, top_k=k)
    metrics = task.metrics()
    preds, target, indexes = _ranking_inputs(scores, batch, k)
    for name in (f"ndcg@{k}", f"recall@{k}", f"hit_rate@{k}"):
        metrics[name].update(preds, target, indexes=indexes)
    ndcg, recall, hit = brute_force(scores, relevant, masked, k)
    assert metrics[f"ndcg@{k}"].compute().item() == pytest.approx(ndcg, abs=1e-5)
    assert metrics[f"recall@{k}"].compute().item() == pytest.approx(recall, abs=1e-6)
    assert metrics[f"hit_rate@{k}"].compute().item() == pytest.approx(hit, abs=1e-6)


def test_eval_batches_mask_earlier_splits_and_mark_relevant_items():
    users = np.array([1, 1, 2, 3, 3, 3])
    items = np.array([4, 5, 6, 7, 8, 9])
    ratings = np.array([5, 3, 4, 1, 4.5, 2], dtype=np.float32)
    masked = {1: np.array([1, 2]), 3: np.array([3])}
    (b,) = eval_batches(users, items, ratings, masked, 4.0, users_per_batch=8)
    assert b["users"].tolist() == [1, 2, 3]
    assert sorted(zip(b["mask_row"].tolist(), b["mask_item"].tolist())) == [(0, 1), (0, 2), (2, 3)]
    assert sorted(zip(b["rel_row"].tolist(), b["rel_item"].tolist())) == [(0, 4), (1, 6), (2, 8)]
    assert b["rating"].sum().item() == pytest.approx(ratings.sum())


def test_sparse_adagrad_equals_dense_adagrad():
    torch.manual_seed(0)
    dense = MatrixFactorization(MatrixFactorizationConfig(dim=3, n_users=6, n_items=9))
    sparse = MatrixFactorization(
        MatrixFactorizationConfig(dim=3, n_users=6, n_items=9, sparse=True)
    )
    sparse.load_state_dict(dense.state_dict())
    opts = [torch.optim.Adagrad(m.parameters(), lr=0.1) for m in (dense, sparse)]
    for _ in range(3):
        x = torch.stack([torch.randint(1, 7, (5,)), torch.randint(1, 10, (5,))], 1)
        y = torch.rand(5) * 5
        for m, opt in zip((dense, sparse), opts):
            opt.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            opt.step()
    assert sparse.user_factors.weight.grad.is_sparse
    for a, b in zip(dense.parameters(), sparse.parameters()):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize(
    "body, message",
    [
        ("userId,movieId,rating,timestamp\n1,2,,5\n", "line 2: column 'rating' is empty"),
        ("userId,movieId,rating,timestamp\n1,2,good,5\n", "'good', not a number"),
        ("userId,movieId,rating,timestamp\nalice,2,4,5\n", "'alice', not an integer id"),
        ("userId,movieId,rating,timestamp\n1,2.5,4,5\n", "'2.5', not an integer id"),
        ("user,item,rating\n1,2,4\n", "no column 'userId'"),
        ("userId,movieId,rating\n1,2,4\n", "use data.split=random"),
    ],
)
def test_bad_ratings_csv_is_one_clear_line(tmp_path, body, message):
    path = tmp_path / "r.csv"
    path.write_text(body)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(".", r"\.")):
        read_ratings_csv(path, RatingsDataConfig(name="ratings_csv", path=str(path)))


def test_sparse_adam_trains_sparse_tables_and_refuses_weight_decay():
    from bigtrain.errors import ConfigError
    from bigtrain.optim import build_optimizer
    from bigtrain.optim.config import OptimConfig

    torch.manual_seed(0)
    m = MatrixFactorization(MatrixFactorizationConfig(dim=3, n_users=6, n_items=9, sparse=True))
    opt = build_optimizer(m, OptimConfig(name="sparse_adam", lr=0.05, weight_decay=0.0))
    x = torch.stack([torch.randint(1, 7, (64,)), torch.randint(1, 10, (64,))], 1)
    y = torch.rand(64) * 5
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(m(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with pytest.raises(ConfigError, match="sparse_adam has no weight decay"):
        build_optimizer(m, OptimConfig(name="sparse_adam", lr=0.05, weight_decay=0.01))
