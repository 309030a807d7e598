"""The shipped recipes reach the accuracy they promise on held-out test data (fixed seed)."""

from pathlib import Path

import pytest

from bigtrain.data.builtin import FASHION_MNIST_DIR
from bigtrain.run import build_run

FASHION = Path(FASHION_MNIST_DIR)

# recipe -> (test metric, threshold, higher is better)
TARGETS = {
    "digits-mlp": ("accuracy", 0.97, True),
    "digits-cnn": ("accuracy", 0.98, True),
    # one flower of the 30 in iris's test split is 0.033: the default split measures 0.9333, so
    # 0.93 failed on a single flip. This fast check leaves one flower of slack; the real bar is
    # the mean over 10 splits (test_iris_mean_accuracy_over_ten_splits, slow).
    "iris-mlp": ("accuracy", 0.90, True),
    "wine-mlp": ("accuracy", 0.95, True),
    "breast-cancer-logreg": ("auroc", 0.98, True),
    "diabetes-regression": ("r2", 0.40, True),
    "mnist-mlp": ("accuracy", 0.90, True),
    "moons-sigmoid-mlp": ("accuracy", 0.85, True),
}


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_recipe_reaches_target(name, tmp_path):
    metric, threshold, higher = TARGETS[name]
    run = build_run(
        name,
        ["trainer.progress=false", "trainer.tensorboard=false"],
        run_dir=tmp_path / "run",
        quiet=True,
    )
    value = run.fit()["test"][metric]
    assert (value >= threshold) if higher else (value <= threshold), f"{name}: {metric}={value}"


def quiet_run(name, overrides, run_dir):
    return build_run(
        name,
        ["trainer.progress=false", "trainer.tensorboard=false", *overrides],
        run_dir=run_dir,
        quiet=True,
    ).fit()


@pytest.mark.slow
def test_iris_mean_accuracy_over_ten_splits(tmp_path):
    # 10 runs take ~30-55 s on one CPU thread, hence slow. Measured per split seed 0..9: 0.933,
    # 0.933, 0.867, 1.0, 0.9, 1.0, 0.967, 0.933, 0.9, 1.0; mean 0.943. The bar is 7 flowers of
    # the 300 below that mean.
    accuracies = [
        quiet_run("iris-mlp", [f"data.split_seed={seed}"], tmp_path / str(seed))["test"]["accuracy"]
        for seed in range(10)
    ]
    assert sum(accuracies) / len(accuracies) >= 0.92, accuracies


@pytest.mark.slow
def test_fashion_mnist_cnn_reaches_target(tmp_path):
    if not FASHION.is_dir():
        pytest.skip("Fashion-MNIST IDX files absent (apt-get install dataset-fashion-mnist)")
    # measured 0.912 test accuracy in 126 s on CPU; 0.90 is 120 of the 10,000 test images below
    accuracy = quiet_run("fashion-mnist-cnn", [], tmp_path / "run")["test"]["accuracy"]
    assert accuracy >= 0.90


def test_linear_regression_textbook(tmp_path):
    """Full-batch GD on y = 3x + 2 + noise: linear-regression-gd-converged (lr 0.5) reaches the
    least-squares line of the 100 points (the oracle: np.polyfit); the textbook's lr 0.01 x 1000
    steps (linear-regression-gd) is not there yet, as its description says."""
    import numpy as np

    from bigtrain.config import load_recipe
    from bigtrain.data import load_data

    data = load_data(load_recipe("linear-regression-gd").data)
    x, y = data.train.x.numpy().ravel(), data.train.y.numpy().ravel()
    ols_slope, ols_intercept = np.polyfit(x, y, 1)
    assert len(x) == 100 and abs(ols_slope - 3) < 0.5 and abs(ols_intercept - 2) < 0.3
    fast = build_run(
        "linear-regression-gd-converged",
        ["trainer.tensorboard=false"],
        run_dir=tmp_path / "fast",
        quiet=True,
    ).fit()["notes"]
    slow = build_run(
        "linear-regression-gd", ["trainer.tensorboard=false"], run_dir=tmp_path / "slow", quiet=True
    ).fit()["notes"]
    assert fast["slope"] == pytest.approx(ols_slope, abs=1e-3)
    assert fast["intercept"] == pytest.approx(ols_intercept, abs=1e-3)
    assert abs(slow["slope"] - ols_slope) > 0.5  # measured: 1.97 after 1000 steps at lr 0.01
