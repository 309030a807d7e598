"""Every shipped recipe validates and its tiny overlay trains for 2 steps end to end."""

from pathlib import Path

import pytest

from bigtrain.config import recipe_names
from bigtrain.data.ratings import DSLABS_FOLDERS, DSLABS_SETUP
from bigtrain.run import build_run

FASHION = Path("/usr/share/datasets/fashion-mnist")
TINY = [n for n in recipe_names(include_tiny=True) if n.startswith("tiny/")]


def test_every_recipe_has_a_tiny_overlay():
    assert {f"tiny/{n}" for n in recipe_names()} == set(TINY)


@pytest.mark.parametrize("name", TINY)
def test_tiny_overlay_trains_two_steps(name, tmp_path):
    if "fashion" in name and not FASHION.is_dir():
        pytest.skip("Fashion-MNIST IDX files absent (apt-get install dataset-fashion-mnist)")
    if "movielens" in name and not any((f / "Rdata.rdb").is_file() for f in DSLABS_FOLDERS):
        pytest.skip(f"MovieLens (dslabs) absent: {DSLABS_SETUP}")
    run = build_run(name, ["trainer.tensorboard=false"], run_dir=tmp_path / "run", quiet=True)
    summary = run.fit()
    assert summary["steps"] == 2 and summary["status"] == "completed"
    assert (tmp_path / "run" / "report.html").is_file()
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()
