"""Recommenders end to end: train on a ratings CSV with a known low-rank structure, beat the
baselines, evaluate, predict (top-K and pairs, cold start), resume bitwise, refuse bad input;
and the same on the real MovieLens ratings when dslabs is installed."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from bigtrain.callbacks.checkpointing import Checkpointer
from bigtrain.cli.main import main
from bigtrain.data.ratings import DSLABS_FOLDERS, DSLABS_SETUP
from bigtrain.run import build_run

BASE = ["trainer.tensorboard=false", "trainer.progress=false"]
HAVE_MOVIELENS = any((f / "Rdata.rdb").is_file() for f in DSLABS_FOLDERS)


def write_ratings(path, n_users=80, n_items=60, per_user=30, seed=0):
    """Ratings from a rank-3 model plus biases and noise, with timestamps."""
    rng = np.random.default_rng(seed)
    p, q = rng.normal(0, 0.8, (n_users, 3)), rng.normal(0, 0.8, (n_items, 3))
    bu, bi = rng.normal(0, 0.4, n_users), rng.normal(0, 0.4, n_items)
    lines = ["userId,movieId,rating,timestamp,title"]
    for u in range(n_users):
        for i in rng.choice(n_items, per_user, replace=False):
            r = np.clip(3.4 + bu[u] + bi[i] + p[u] @ q[i] + rng.normal(0, 0.3), 0.5, 5.0)
            lines.append(f"{u + 10},{i + 100},{r:.2f},{rng.integers(0, 10**6)},Movie {i + 100}")
    path.write_text("\n".join(lines) + "\n")
    return path


def recipe(tmp_path, **data):
    csv = write_ratings(tmp_path / "ratings.csv")
    return [
        "data.name=ratings_csv", f"data.path={csv}", "data.batch_size=128", "model.name=mf",
        "model.dim=3", "model.embedding_l2=0.01", "optim.lr=0.02", "optim.weight_decay=0",
        "trainer.max_epochs=25", "trainer.eval_every=125",
        *(f"data.{k}={v}" for k, v in data.items()), *BASE,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mf")
    run_dir = tmp / "run"
    summary = build_run(
        "movielens-mf", recipe(tmp), run_dir=run_dir, quiet=True, report=False
    ).fit()
    return tmp, run_dir, summary


def test_matrix_factorisation_beats_both_baselines(trained):
    _, _, summary = trained
    test = summary["test"]
    assert test["rmse"] < test["rmse_user_item_bias"] < test["rmse_global_mean"]
    assert test["rmse"] < 0.9 * test["rmse_user_item_bias"]
    for key in ("ndcg@10", "recall@10", "hit_rate@10", "ndcg@10_most_popular", "mae"):
        assert 0.0 <= test[key] <= 5.0, key


def test_eval_json_gives_rmse_and_ranking_metrics(trained, capsys):
    _, run_dir, summary = trained
    assert main(["eval", str(run_dir), "--split", "test", "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["rmse"] == pytest.approx(summary["test"]["rmse"])
    assert "ndcg@10" in got and "recall@10" in got


def test_predict_top_k_and_pairs_with_cold_start(trained, tmp_path, capsys):
    _, run_dir, _ = trained
    out = tmp_path / "top.csv"
    assert main(["predict", str(run_dir), "--user", "10", "--top-k", "5", "--out", str(out)]) == 0
    rows = out.read_text().splitlines()
    assert rows[0].startswith("rank,item,title") and len(rows) == 6
    rated = {
        int(line.split(",")[1])
        for line in (trained[0] / "ratings.csv").read_text().splitlines()[1:]
        if line.startswith("10,")
    }
    recommended = [int(r.split(",")[1]) for r in rows[1:]]
    assert not rated & set(recommended)  # only items the user has not rated
    assert all(r.split(",")[2].startswith("Movie ") for r in rows[1:])
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("userId,movieId\n10,100\n10,99999\n5,100\n")
    capsys.readouterr()
    assert main(["predict", str(run_dir), str(pairs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "user,item,predicted_rating,cold_start"
    assert lines[1].endswith(",") and lines[2].endswith(",item") and lines[3].endswith(",user")
    assert all(0.0 < float(line.split(",")[2]) < 6.0 for line in lines[1:])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--user", "99999"], "user 99999 is not in the data (80 users, ids 10..89)"),
        (["--user", "ten"], "--user must be an integer id, got 'ten'"),
        (["--user", "10", "--top-k", "61"], "--top-k 61 is larger than the 60 items"),
        ([], "takes either --user ID"),
    ],
)
def test_bad_predict_input_is_one_line_and_exit_2(trained, args, message, capsys):
    _, run_dir, _ = trained
    assert main(["predict", str(run_dir), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_pairs_with_non_integer_ids_are_refused(trained, tmp_path, capsys):
    _, run_dir, _ = trained
    pairs = tmp_path / "pairs.csv"
    pairs.write_text("userId,movieId\n10,abc\n")
    assert main(["predict", str(run_dir), str(pairs)]) == 2
    assert "line 2: column 'movieId' is 'abc', not an integer id" in capsys.readouterr().err


def test_bad_ratings_file_fails_before_training(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("userId,movieId,rating,timestamp\n1,2,4,1\n1,3,,2\n")
    args = ["train", "movielens-mf", "data.name=ratings_csv", f"data.path={bad}", "--quiet"]
    assert main([*args, "--run-dir", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert "line 3: column 'rating' is empty" in err and len(err.splitlines()) == 1


class Crash(Exception):
    """The process dies right after a checkpoint."""


def test_ranking_run_resumes_bitwise(tmp_path, monkeypatch):
    overrides = [
        *recipe(tmp_path), "model.name=two_tower", "task.name=ranking", "trainer.max_epochs=null",
        "trainer.max_steps=12", "trainer.eval_every=6", "trainer.checkpoint_every=5",
        "data.relevant_rating=3",
    ]  # fmt: skip
    name = "movielens-two-tower"
    first = build_run(name, overrides, run_dir=tmp_path / "a", quiet=True, report=False).fit()
    real_save = Checkpointer.save

    def save(self, state):
        real_save(self, state)
        if state.step == 5:  # mid-epoch: 5 of 10 steps
            raise Crash

    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "save", save)
        with pytest.raises(Crash):
            build_run(name, overrides, run_dir=tmp_path / "b", quiet=True, report=False).fit()
    torch.manual_seed(99)  # another process: other global RNG state
    resumed = build_run(
        name, overrides, run_dir=tmp_path / "b", resume=True, quiet=True, report=False
    ).fit()
    wa = load_file(str(tmp_path / "a/checkpoints/best/model.safetensors"))
    wb = load_file(str(tmp_path / "b/checkpoints/best/model.safetensors"))
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    assert first["test"] == resumed["test"] and first["steps"] == resumed["steps"] == 12


@pytest.mark.skipif(not HAVE_MOVIELENS, reason=f"MovieLens (dslabs) absent: {DSLABS_SETUP}")
def test_real_movielens_mf_beats_the_bias_baseline(tmp_path):
    summary = build_run(
        "movielens-mf",
        ["trainer.max_epochs=2", *BASE],
        run_dir=tmp_path / "r",
        quiet=True,
        report=False,
    ).fit()
    test = summary["test"]
    assert test["rmse"] < test["rmse_user_item_bias"] < test["rmse_global_mean"]
