"""`bigtrain tune`, `lr-find` and `batch-size-find` as a user drives them: a study that is
continued, its best.yaml trained, and every bad input as one line with exit code 2."""

from __future__ import annotations

import csv
import sys

import pytest
import yaml

from bigtrain.cli.main import main

pytest.importorskip("optuna", reason="pip install 'bigtrain[tune]'")

FAST = ["trainer.max_steps=6", "trainer.eval_every=3", "trainer.tensorboard=false"]
SPACE = (
    "optim.lr: {type: float, low: 1.0e-3, high: 3.0e-1, log: true}\n"
    "model.hidden: {type: categorical, choices: [[32], [64, 32]]}\n"
)


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def space(tmp_path_factory):
    path = tmp_path_factory.mktemp("space") / "space.yaml"
    path.write_text(SPACE)
    return path


@pytest.fixture(scope="module")
def study(tmp_path_factory, space):
    """A study of 1 trial (the test continues it to 2)."""
    folder = tmp_path_factory.mktemp("studies") / "digits"
    first = main(["tune", "tiny/digits-mlp", "--space", str(space), "--trials", "1",
                  "--study-dir", str(folder), "--quiet", *FAST])  # fmt: skip
    assert first == 0
    assert sorted(p.name for p in (folder / "trials").iterdir()) == ["trial-000"]
    return folder


def _rows(folder):
    with open(folder / "trials.csv") as f:
        return list(csv.DictReader(f))


def test_a_continued_study_runs_only_the_remaining_trials(capsys, study, space):
    code, out, err = run_cli(capsys, "tune", "tiny/digits-mlp", "--space", space, "--trials", 2,
                             "--study-dir", study, *FAST)  # fmt: skip
    assert code == 0, err
    assert "trial 1 (complete)" in err and "trial 0" not in err  # one new trial, printed
    assert sorted(p.name for p in (study / "trials").iterdir()) == ["trial-000", "trial-001"]
    rows = _rows(study)
    assert [r["trial"] for r in rows] == ["0", "1"]
    assert {"state", "val/accuracy", "optim.lr", "model.hidden", "test/accuracy"} <= set(rows[0])
    assert "2 trials" in out and "(1 run now)" in out and "best: trial" in out
    for name in ("study.db", "history.png", "params.png", "best.yaml"):
        assert (study / name).stat().st_size > 0
    # asking for fewer trials than the study holds runs none and reports the study
    code, out, _ = run_cli(capsys, "tune", "tiny/digits-mlp", "--space", space, "--trials", 1,
                           "--study-dir", study, "--quiet", *FAST)  # fmt: skip
    assert code == 0 and "(0 run now)" in out and len(_rows(study)) == 2


def test_best_yaml_is_the_best_trial_and_trains(capsys, study, tmp_path):
    rows = [r for r in _rows(study) if r["state"] == "complete"]
    best = max(rows, key=lambda r: float(r["val/accuracy"]))
    tuned = yaml.safe_load((study / "best.yaml").read_text())
    assert tuned["optim"]["lr"] == pytest.approx(float(best["optim.lr"]), rel=1e-5)
    assert tuned["model"]["hidden"] == yaml.safe_load(best["model.hidden"])
    assert tuned["trainer"]["max_steps"] == 6  # the study's overrides are part of the recipe
    code, out, err = run_cli(capsys, "train", study / "best.yaml", "--run-dir", tmp_path / "r",
                             "--json")  # fmt: skip
    assert code == 0, err
    # the same recipe and seed as the trial: the same test accuracy
    summary = yaml.safe_load(out)
    assert summary["test"]["accuracy"] == pytest.approx(float(best["test/accuracy"]), abs=1e-5)


def test_a_diverged_trial_counts_and_the_search_goes_on(capsys, tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {type: float, low: 1.0e+4, high: 1.0e+5, log: true}\n")
    code, out, err = run_cli(capsys, "tune", "tiny/digits-mlp", "--space", space, "--trials", 1,
                             "--study-dir", tmp_path / "s", "optim.name=sgd", *FAST)  # fmt: skip
    assert code == 0 and "trial 0 (diverged)" in err and "loss became nan" in err
    assert [r["state"] for r in _rows(tmp_path / "s")] == ["diverged"]
    assert "no trial completed yet: no best.yaml" in out and not (tmp_path / "s/best.yaml").exists()


@pytest.mark.parametrize(
    "entry, message",
    [
        ("optim.lrr: {type: float, low: 0.001, high: 0.1}", "did you mean 'optim.lr'?"),
        ("model.dropuot: {type: float, low: 0.0, high: 0.5}", "did you mean 'model.dropout'?"),
        ("optim.lr: {type: uniform, low: 0.001, high: 0.1}", "type must be one of"),
        ("optim.lr: {type: float, low: 0.1, high: 0.001}", "low must be below high"),
        ("model.hidden: {type: categorical, choices: []}", "choices must be a non-empty list"),
    ],
)
def test_bad_spaces_are_one_line_errors(capsys, tmp_path, entry, message):
    path = tmp_path / "space.yaml"
    path.write_text(entry + "\n")
    code, out, err = run_cli(capsys, "tune", "tiny/digits-mlp", "--space", path,
                             "--study-dir", tmp_path / "s")  # fmt: skip
    assert code == 2 and message in err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "s").exists()  # nothing was created


def test_other_bad_inputs_are_one_line_errors(capsys, tmp_path, study, space):
    cases = [
        (["tiny/digits-cnn", "--study-dir", study, *FAST], "holds a study of another recipe"),
        (["tiny/digits-mlp", "--study-dir", study, "trainer.max_steps=7"], "changed: "),
        (["tiny/digits-mlp", "--study-dir", tmp_path / "n", "--trials", "0"], "--trials must be"),
        (["tiny/digits-mlp", "--study-dir", tmp_path], "holds no study"),
    ]
    (tmp_path / "unrelated.txt").write_text("x")
    for argv, message in cases:
        code, _, err = run_cli(capsys, "tune", "--space", space, *argv)
        assert code == 2 and message in err and err.count("\n") == 1, err
    other = tmp_path / "other.yaml"
    other.write_text("model.dropout: {type: float, low: 0.0, high: 0.5}\n")
    code, _, err = run_cli(capsys, "tune", "tiny/digits-mlp", "--space", other,
                           "--study-dir", study, *FAST)  # fmt: skip
    assert code == 2 and "another space" in err
    code, _, err = run_cli(capsys, "tune", "tiny/digits-mlp", "--space", "no-such-space")
    assert code == 2 and "does not exist" in err


def test_tune_without_optuna_says_how_to_install_it(capsys, monkeypatch, space, tmp_path):
    monkeypatch.setitem(sys.modules, "optuna", None)  # `import optuna` raises ImportError
    code, _, err = run_cli(capsys, "tune", "tiny/digits-mlp", "--space", space,
                           "--study-dir", tmp_path / "s")  # fmt: skip
    assert code == 2 and "pip install 'bigtrain[tune]'" in err


def test_lr_find_writes_plot_and_csv_only_into_out(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "lr-find", "tiny/digits-mlp", "--start", "1e-5",
                             "--steps", "40", "--out", "found")  # fmt: skip
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["found"]
    files = sorted(p.name for p in (tmp_path / "found").iterdir())
    assert files == ["lr_find_digits-mlp.csv", "lr_find_digits-mlp.png"]
    rows = list(csv.DictReader(open(tmp_path / "found" / "lr_find_digits-mlp.csv")))
    assert float(rows[0]["lr"]) == pytest.approx(1e-5) and len(rows) <= 40
    assert "steepest descent" in out and "min smoothed loss / 10" in out
    for argv, message in ((["--start", "0"], "--start"), (["--end", "1e-9"], "--end must be")):
        code, _, err = run_cli(capsys, "lr-find", "tiny/digits-mlp", *argv)
        assert code == 2 and message in err and err.count("\n") == 1


def test_batch_size_find_table_plot_and_bad_limits(capsys, tmp_path):
    code, out, err = run_cli(capsys, "batch-size-find", "tiny/digits-mlp", "--max-batch", "32",
                             "--steps", "1", "--out", tmp_path)  # fmt: skip
    assert code == 0, err
    assert "largest batch that fits: 32" in out
    assert (tmp_path / "batch_size_find_digits-mlp.png").stat().st_size > 0
    rows = list(csv.DictReader(open(tmp_path / "batch_size_find_digits-mlp.csv")))
    assert [r["batch_size"] for r in rows] == ["16", "32"]
    assert all(int(r["peak_bytes"]) > 0 and float(r["examples_per_s"]) > 0 for r in rows)
    code, out, _ = run_cli(capsys, "batch-size-find", "tiny/digits-mlp", "--memory-limit",
                           "1KiB", "--steps", "1", "--out", tmp_path)  # fmt: skip
    assert code == 0 and "no batch fits: the model's weights alone take" in out
    for argv, message in (
        (["--memory-limit", "4 gigs"], "--memory-limit '4 gigs'"),
        (["--steps", "0"], "--steps must be"),
        (["--max-batch", "0"], "--max-batch must be"),
    ):
        code, _, err = run_cli(capsys, "batch-size-find", "tiny/digits-mlp", *argv)
        assert code == 2 and message in err and err.count("\n") == 1, err
