"""`bigtrain eval --ci/--calibration/--temperature-scale/--per-class/--membership` on run folders."""

from __future__ import annotations

import json

import pytest

from bigtrain.cli.main import main
from bigtrain.run import build_run


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(capsys, *argv) -> str:
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and out == ""
    return err


@pytest.fixture(scope="module")
def iris_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("runs") / "iris"
    build_run("tiny/iris-mlp", ["trainer.tensorboard=false"], run_dir=run_dir, quiet=True).fit()
    return run_dir


def final_test(run_dir):
    """The metrics of the final test at the end of training (what a plain eval prints)."""
    return json.loads((run_dir / "summary.json").read_text())["test"]


@pytest.fixture(scope="module")
def regression_run(tmp_path_factory):
    """A regression run without a validation split."""
    run_dir = tmp_path_factory.mktemp("runs") / "diabetes"
    overrides = ["trainer.tensorboard=false", "data.val_fraction=0"]
    build_run("tiny/diabetes-regression", overrides, run_dir=run_dir, quiet=True).fit()
    return run_dir


def test_ci_json_keeps_the_plain_metrics_and_adds_intervals(capsys, iris_run):
    plain = final_test(iris_run)
    code, out, err = run_cli(
        capsys, "eval", iris_run, "--ci", "0.9", "--resamples", "200", "--json"
    )
    assert code == 0 and "evaluation/test.json" in err
    result = json.loads(out)
    assert set(plain) <= set(result)  # existing consumers see the same keys and values
    assert {k: result[k] for k in plain} == pytest.approx(plain)
    ci = result["ci"]
    assert set(ci) == {"loss", "accuracy", "f1", "precision", "recall", "auroc"}
    for name, interval in ci.items():
        assert interval["value"] == pytest.approx(plain[name])
        assert interval["low"] <= interval["value"] <= interval["high"]
    assert result["bootstrap"] == {
        "level": 0.9, "method": "percentile", "resamples": 200, "seed": 0, "n": 30,
    }  # fmt: skip
    saved = json.loads((iris_run / "evaluation" / "test.json").read_text())
    assert saved["ci"] == ci and saved["metrics"] == {k: result[k] for k in saved["metrics"]}
    assert 'id="trust"' in (iris_run / "report.html").read_text()


def test_calibration_per_class_and_membership(capsys, iris_run):
    argv = ["eval", iris_run, "--temperature-scale", "--per-class", "--membership"]
    code, out, _ = run_cli(capsys, *argv)
    assert code == 0
    assert "calibration" in out and "per class" in out and "membership inference" in out
    saved = json.loads((iris_run / "evaluation" / "test.json").read_text())
    cal = saved["calibration"]
    assert cal["temperature"] > 0 and {"nll", "ece", "reliability"} <= set(cal["after"])
    assert cal["before"]["nll"] == pytest.approx(saved["metrics"]["loss"], rel=1e-4)
    assert sum(b["count"] for b in cal["before"]["reliability"]) == cal["n"] == 30
    assert [r["class"] for r in saved["per_class"]] == ["setosa", "versicolor", "virginica"]
    assert sum(r["support"] for r in saved["per_class"]) == 30
    mia = saved["membership"]
    assert mia["n_members"] == mia["n_nonmembers"] == 30 and 0 <= mia["auc"] <= 1
    assert "ci" in saved  # the earlier --ci of the same checkpoint is kept
    page = (iris_run / "report.html").read_text()
    assert 'id="fig-reliability-test"' in page and "Membership inference" in page


@pytest.mark.parametrize(
    "args, message",
    [
        (["--ci", "1.5"], "--ci must be a confidence level between 0 and 1"),
        (["--ci", "0"], "--ci must be a confidence level between 0 and 1"),
        (["--ci", "0.9", "--resamples", "1"], "--resamples must be at least 2"),
        (["--calibration", "--bins", "0"], "--bins must be at least 1"),
        (["--membership", "--split", "train"], "--membership compares the train split"),
        (["--temperature-scale", "--split", "val"], "fits the temperature on the val split"),
    ],
)
def test_bad_trust_options_are_one_line(capsys, iris_run, args, message):
    before = sorted(p.name for p in iris_run.rglob("*"))
    assert message in one_line_error(capsys, "eval", iris_run, *args)
    assert sorted(p.name for p in iris_run.rglob("*")) == before


@pytest.mark.parametrize(
    "args, message",
    [
        (["--calibration"], "--calibration applies to classifiers; this is a regression run"),
        (["--per-class"], "--per-class applies to classifiers; this is a regression run"),
        (["--split", "val", "--ci", "0.95"], "has no val split"),
    ],
)
def test_options_that_do_not_fit_the_run(capsys, regression_run, args, message):
    assert message in one_line_error(capsys, "eval", regression_run, *args)
    assert not (regression_run / "evaluation").exists()


def test_regression_ci_and_membership(capsys, regression_run):
    code, out, _ = run_cli(
        capsys, "eval", regression_run, "--ci", "0.95", "--resamples", "100", "--membership",
        "--json",
    )  # fmt: skip
    assert code == 0
    result = json.loads(out)
    assert set(result["ci"]) == {"loss", "mse", "mae", "r2"}
    assert result["ci"]["mse"]["value"] == pytest.approx(result["mse"])
    assert result["membership"]["n_members"] == result["membership"]["n_nonmembers"]
