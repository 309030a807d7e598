"""DP-SGD runs end to end: epsilon in the log, summary and report; exact resume; bad input."""

import json

import pytest
import torch
from safetensors.torch import load_file

pytest.importorskip("opacus", reason="pip install 'bigtrain[privacy]'")

from bigtrain.callbacks.checkpointing import Checkpointer  # noqa: E402
from bigtrain.cli.main import main  # noqa: E402
from bigtrain.privacy import epsilon_after  # noqa: E402
from bigtrain.report.html import load_run  # noqa: E402
from bigtrain.report.privacy import section  # noqa: E402
from bigtrain.run import build_run  # noqa: E402

BASE = ["trainer.tensorboard=false", "trainer.progress=false"]


def read(run_dir):
    summary = json.loads((run_dir / "summary.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return summary, records


def test_dp_run_reports_epsilon_in_log_summary_and_report(tmp_path):
    run_dir = tmp_path / "run"
    overrides = [
        *["trainer.max_steps=6", "trainer.log_every=2", "trainer.eval_every=3", *BASE],
        *["privacy.noise_multiplier=null", "privacy.target_epsilon=0.5"],  # calibrated
    ]
    # report=False: the report's other figures cost seconds; the privacy section is made below
    build_run("tiny/breast-cancer-dp", overrides, run_dir=run_dir, quiet=True, report=False).fit()
    summary, records = read(run_dir)
    p = summary["privacy"]
    assert p["steps"] == 6 and p["accountant"] == "rdp" and p["target_epsilon"] == 0.5
    # the planned steps spend the target: calibrated within Opacus' 0.01 tolerance
    q, sigma = p["sample_rate"], p["noise_multiplier"]
    assert p["epsilon"] == pytest.approx(epsilon_after(sigma, q, 6, 1e-5))
    assert 0.49 <= p["epsilon"] <= 0.5
    logged = [(r["step"], r["epsilon"]) for r in records if r["kind"] == "privacy"]
    assert [s for s, _ in logged] == [2, 3, 4, 6]  # every log step and evaluation, once each
    eps = [e for _, e in logged]
    assert eps == sorted(eps) and eps[-1] == p["epsilon"]
    assert eps[0] == pytest.approx(epsilon_after(sigma, q, 2, 1e-5))
    html = section(load_run(run_dir))
    assert 'id="privacy"' in html and 'id="fig-privacy"' in html and f"{p['epsilon']:.4g}" in html


class Crash(Exception):
    pass


def test_resumed_run_ends_at_the_uninterrupted_epsilon(tmp_path, monkeypatch):
    overrides = ["trainer.max_steps=6", "trainer.checkpoint_every=3", *BASE]
    kw = {"quiet": True, "report": False}
    want = build_run("tiny/breast-cancer-dp", overrides, run_dir=tmp_path / "a", **kw).fit()
    real_save = Checkpointer.save

    def save_then_crash(self, state):
        real_save(self, state)
        if state.step == 3:
            raise Crash

    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "save", save_then_crash)
        with pytest.raises(Crash):
            build_run("tiny/breast-cancer-dp", overrides, run_dir=tmp_path / "b", **kw).fit()
    torch.manual_seed(1234)  # another process: other global RNG state (the noise's generator)
    got = build_run(
        "tiny/breast-cancer-dp", overrides, run_dir=tmp_path / "b", resume=True, **kw
    ).fit()
    assert got["privacy"] == want["privacy"] and got["privacy"]["steps"] == 6
    wa = load_file(str(tmp_path / "a/checkpoints/best/model.safetensors"))
    wb = load_file(str(tmp_path / "b/checkpoints/best/model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same Poisson batches, same noise


def one_line_error(capsys, *argv) -> str:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 2, (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_batchnorm_cnn_is_refused_and_trains_once_fixed(tmp_path, capsys):
    dp = ["privacy.noise_multiplier=1.0", *BASE]
    err = one_line_error(capsys, "train", "tiny/digits-cnn", "--run-dir", tmp_path / "bn", *dp)
    assert "layer 'features.1' (BatchNorm2d)" in err
    assert "model.batch_norm=false" in err and "privacy.fix_modules=true" in err
    assert not (tmp_path / "bn").exists()
    fixed = tmp_path / "fixed"
    assert (
        main(["train", "tiny/digits-cnn", "--run-dir", str(fixed), "privacy.fix_modules=true", *dp])
        == 0
    )
    capsys.readouterr()
    # eval rebuilds the run's model, GroupNorm included, and loads its weights
    assert main(["eval", str(fixed), "--json"]) == 0
    assert "accuracy" in json.loads(capsys.readouterr().out)


def test_impossible_budget_is_one_line_naming_the_smallest_epsilon(tmp_path, capsys):
    err = one_line_error(
        capsys, "train", "tiny/breast-cancer-dp", "--run-dir", tmp_path / "r",
        "privacy.noise_multiplier=null", "privacy.target_epsilon=0.01", *BASE,
    )  # fmt: skip
    assert "cannot be met in 2 steps" in err and "smallest epsilon reachable" in err
