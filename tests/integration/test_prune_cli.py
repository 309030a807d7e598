"""`bigtrain compress prune` on real run folders, and the recipe's `prune:` section through
training and resume: variants eval like any run; bad input is one line, exit 2."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from safetensors.torch import load_file

from bigtrain.callbacks.checkpointing import Checkpointer
from bigtrain.cli.main import main
from bigtrain.run import build_run

FAST = ["trainer.tensorboard=false", "trainer.progress=false"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def digests(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("prune")
    steps = ["trainer.max_steps=40", "trainer.eval_every=20"]
    build_run(
        "tiny/digits-mlp", [*FAST, *steps], run_dir=root / "mlp", quiet=True, report=False
    ).fit()
    build_run(
        "tiny/digits-cnn", [*FAST, *steps], run_dir=root / "cnn", quiet=True, report=False
    ).fit()
    return root


def eval_json(capsys, run_dir):
    code, out, err = run_cli(capsys, "eval", run_dir, "--json")
    assert code == 0, err
    return json.loads(out)


def test_unstructured_variant_evals_like_the_in_memory_model(capsys, runs, tmp_path):
    before = digests(runs / "mlp")
    out = tmp_path / "p50"
    code, text, err = run_cli(capsys, "compress", "prune", runs / "mlp", "--amount", "0.5",
                              "--scope", "layer", "--out", out)  # fmt: skip
    assert code == 0, err
    assert "net.0" in text and "sparsity" in text
    summary = json.loads((out / "summary.json").read_text())["pruning"]
    for layer in summary["layers"]:
        assert layer["zeros"] == round(0.5 * layer["params"])
    assert eval_json(capsys, out)["accuracy"] == pytest.approx(summary["final"]["accuracy"])
    weights = load_file(str(out / "checkpoints/best/model.safetensors"))
    assert "net.0.weight_mask" in weights  # masks kept: a later fine-tune holds them
    assert digests(runs / "mlp") == before  # the source run is never modified

    perm = tmp_path / "perm"
    code, _, err = run_cli(capsys, "compress", "prune", runs / "mlp", "--amount", "0.5",
                           "--fine-tune-steps", "3", "--make-permanent", "--out", perm)  # fmt: skip
    assert code == 0, err
    weights = load_file(str(perm / "checkpoints/best/model.safetensors"))
    assert "net.0.weight" in weights and "net.0.weight_mask" not in weights
    zeros = sum(int((weights[f"net.{i}.weight"] == 0).sum()) for i in (0, 3, 6))
    n = sum(weights[f"net.{i}.weight"].numel() for i in (0, 3, 6))
    assert zeros == round(0.5 * n)  # the fine-tune held the masks
    info = json.loads((perm / "summary.json").read_text())["pruning"]
    assert info["fine_tuned"] is not None
    assert eval_json(capsys, perm)["loss"] == pytest.approx(info["final"]["loss"], rel=1e-5)


def test_structured_permanent_cnn_is_smaller_and_evals_strictly(capsys, runs, tmp_path):
    out = tmp_path / "s30"
    code, _, err = run_cli(capsys, "compress", "prune", runs / "cnn", "--amount", "0.3",
                           "--structured", "--make-permanent", "--out", out, "--json")  # fmt: skip
    assert code == 0, err
    info = json.loads((out / "summary.json").read_text())["pruning"]
    assert info["parameters_after"] < 0.6 * info["parameters_before"]
    weights = load_file(str(out / "checkpoints/best/model.safetensors"))
    assert weights["features.0.weight"].shape[0] == round(0.7 * 32)
    # the permanent model computes what the masked one did
    assert info["final"]["loss"] == pytest.approx(info["pruned"]["loss"], rel=1e-5)
    assert eval_json(capsys, out)["loss"] == pytest.approx(info["final"]["loss"], rel=1e-5)
    # a variant of a variant: prune the smaller model again
    again = tmp_path / "again"
    code, _, err = run_cli(capsys, "compress", "prune", out, "--amount", "0.5", "--out", again)
    assert code == 0, err
    assert eval_json(capsys, again)["loss"] == pytest.approx(
        json.loads((again / "summary.json").read_text())["pruning"]["final"]["loss"], rel=1e-5
    )


def test_bad_inputs_exit_2_with_one_line(capsys, runs, tmp_path):
    for amount in ("1.0", "-0.1"):
        code, _, err = run_cli(capsys, "compress", "prune", runs / "mlp", "--amount", amount,
                               "--out", tmp_path / "x")  # fmt: skip
        assert code == 2 and "--amount must be in [0, 1)" in err and len(err.splitlines()) == 1
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "compress", "prune", runs / "mlp", "--amount", "0.5",
                           "--out", full)  # fmt: skip
    assert code == 2 and "not empty" in err and len(err.splitlines()) == 1
    assert (full / "keep.txt").read_text() == "mine"
    logreg = tmp_path / "logreg"
    build_run("tiny/breast-cancer-logreg", FAST, run_dir=logreg, quiet=True, report=False).fit()
    code, _, err = run_cli(capsys, "compress", "prune", logreg, "--amount", "0.5",
                           "--structured", "--out", tmp_path / "y")  # fmt: skip
    assert code == 2 and "no units" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


class Crash(Exception):
    pass


GRADUAL = [
    *FAST,
    "trainer.max_steps=24",
    "trainer.checkpoint_every=5",
    "prune.amount=0.6",
    "prune.schedule.start_step=2",
    "prune.schedule.end_step=14",
    "prune.schedule.every=4",
    "model.dropout=0.2",
]


def test_gradual_pruning_resumes_bitwise_and_evals(capsys, tmp_path, monkeypatch):
    straight = build_run("tiny/digits-mlp", GRADUAL, run_dir=tmp_path / "a", quiet=True).fit()
    real_save = Checkpointer.save

    def save(self, state):
        real_save(self, state)
        if state.step == 10:  # mid-schedule: masks at 10 differ from the final ones
            raise Crash

    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "save", save)
        with pytest.raises(Crash):
            build_run("tiny/digits-mlp", GRADUAL, run_dir=tmp_path / "b", quiet=True).fit()
    torch.manual_seed(99)
    resumed = build_run("tiny/digits-mlp", GRADUAL, run_dir=tmp_path / "b", resume=True,
                        quiet=True).fit()  # fmt: skip
    a = load_file(str(tmp_path / "a/checkpoints/best/model.safetensors"))
    b = load_file(str(tmp_path / "b/checkpoints/best/model.safetensors"))
    assert a.keys() == b.keys() and "net.0.weight_mask" in a
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert straight["pruning"]["sparsity"] == pytest.approx(0.6, abs=1e-3)
    assert resumed["pruning"] == straight["pruning"]
    assert eval_json(capsys, tmp_path / "a")["loss"] == pytest.approx(straight["test"]["loss"])
    assert 'id="pruning"' in (tmp_path / "a/report.html").read_text()
