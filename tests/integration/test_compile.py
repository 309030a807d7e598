"""trainer.compile: compiled in place, so checkpoints keep the plain model's parameter names."""

import torch

from bigtrain.cli.eval_cmd import load_run
from bigtrain.run import build_run


def test_compiled_run_checkpoint_loads_into_a_plain_model(tmp_path):
    overrides = ["trainer.compile=true", "trainer.tensorboard=false", "model.hidden=[16]"]
    summary = build_run("tiny/iris-mlp", overrides, run_dir=tmp_path / "r", quiet=True).fit()
    assert summary["steps"] == 2
    built, path = load_run(tmp_path / "r")  # config says compile: true; weights load by name
    names = dict(built.trainer.state.model.named_parameters())
    assert all(not n.startswith("_orig_mod") for n in names)
    assert torch.isfinite(next(iter(names.values()))).all()
