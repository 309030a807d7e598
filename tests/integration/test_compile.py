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


def test_compile_pays_only_when_the_remaining_time_repays_it():
    from bigtrain.callbacks import auto_compile as ac

    saving_per_step = 0.1 * (1 - 1 / ac.COMPILE_SPEEDUP)  # 100 ms steps
    steps_to_repay = ac.COMPILE_COST_S / saving_per_step
    assert ac.compile_pays(int(steps_to_repay) + 10, 0.1)
    assert not ac.compile_pays(int(steps_to_repay) - 10, 0.1)
    assert not ac.compile_pays(10**9, 0.0)


def _auto_run(tmp_path, monkeypatch, cost, steps, resume=False):
    """A compile: auto run whose compile calls are counted instead of compiling."""
    from bigtrain.callbacks import auto_compile as ac

    calls = []
    monkeypatch.setattr(ac, "COMPILE_COST_S", cost)
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self, *a, **k: calls.append(self))
    overrides = [
        "trainer.compile=auto",
        f"trainer.max_steps={steps}",
        "trainer.checkpoint_every=12",
        "trainer.tensorboard=false",
        "trainer.progress=false",
    ]
    build_run("tiny/shakespeare-char", overrides, run_dir=tmp_path / "r", quiet=True,
              resume=resume).fit()  # fmt: skip
    return calls


def test_auto_compile_decides_on_measured_steps_and_a_resume_re_decides(tmp_path, monkeypatch):
    assert _auto_run(tmp_path / "a", monkeypatch, cost=1e9, steps=20) == []  # never pays
    calls = _auto_run(tmp_path / "b", monkeypatch, cost=0.0, steps=12)
    assert len(calls) == 1  # decided after the warm-up and timed steps
    # the first part compiled; the resumed part compiles again only if what is left pays
    assert len(_auto_run(tmp_path / "b", monkeypatch, cost=0.0, steps=20, resume=True)) == 1
    (tmp_path / "c").mkdir()
    _auto_run(tmp_path / "c", monkeypatch, cost=0.0, steps=12)
    assert _auto_run(tmp_path / "c", monkeypatch, cost=1e9, steps=20, resume=True) == []
