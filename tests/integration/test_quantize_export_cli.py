"""`bigtrain compress quantize`, `compress report` and `export` on real run folders: variants
eval like any run (the same metric as the in-memory int8 model), the quantize: section trains
with fake quantization and converts, bad input is one line with exit 2."""

from __future__ import annotations

import json

import pytest
import torch

from bigtrain.cli.main import main
from bigtrain.run import build_run

FAST = ["trainer.tensorboard=false", "trainer.progress=false"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("quant")
    steps = ["trainer.max_steps=30", "trainer.eval_every=15"]
    build_run("tiny/digits-mlp", [*FAST, *steps], run_dir=root / "mlp", quiet=True,
              report=False).fit()  # fmt: skip
    qat = ["quantize.method=qat", "quantize.freeze_observers_step=20"]
    build_run("tiny/digits-mlp", [*FAST, *steps, *qat], run_dir=root / "qat", quiet=True,
              report=False).fit()  # fmt: skip
    return root


def _eval(capsys, run_dir):
    code, out, _ = run_cli(capsys, "eval", run_dir, "--json")
    assert code == 0
    return json.loads(out)


@pytest.mark.parametrize("method", ["dynamic", "static"])
def test_quantize_variant_evals_like_the_in_memory_model(runs, capsys, method):
    out = runs / f"mlp-{method}"
    code, text, _ = run_cli(capsys, "compress", "quantize", runs / "mlp", "--out", out,
                            "--method", method, "--calibration-batches", "3", "--json")  # fmt: skip
    assert code == 0
    info = json.loads(text)
    assert info["weight_bytes_after"]["int8"] * 4 == info["weight_bytes_before"]["float"]
    assert "Linear" in info["quantized_modules"] or "LinearReLU" in info["quantized_modules"]
    ev = _eval(capsys, out)
    assert ev["accuracy"] == pytest.approx(info["after"]["accuracy"], abs=1e-9)
    assert ev["loss"] == pytest.approx(info["after"]["loss"], rel=1e-6)
    assert abs(info["after"]["accuracy"] - info["before"]["accuracy"]) <= 0.02
    steps = json.loads((out / "variant.json").read_text())["steps"]
    assert steps[0]["kind"] == f"quantize_{method}"


def test_qat_run_converts_to_int8(runs, capsys):
    out = runs / "qat-int8"
    code, text, _ = run_cli(capsys, "compress", "quantize", runs / "qat", "--out", out, "--json")
    assert code == 0
    info = json.loads(text)
    assert info["method"] == "qat" and info["weight_bytes_after"]["float"] == 0
    # fake quantization in training predicts the int8 model closely
    assert abs(info["after"]["loss"] - info["before"]["loss"]) < 0.05 * info["before"]["loss"]
    assert _eval(capsys, out)["accuracy"] == pytest.approx(info["after"]["accuracy"])
    assert _eval(capsys, runs / "qat")["accuracy"] == pytest.approx(info["before"]["accuracy"])


def test_report_has_a_row_per_run(runs, capsys):
    if not (runs / "mlp-dynamic").is_dir():
        run_cli(capsys, "compress", "quantize", runs / "mlp", "--out", runs / "mlp-dynamic")
    code, text, _ = run_cli(capsys, "compress", "report", runs / "mlp", runs / "mlp-dynamic",
                            "--repeats", "3", "--json")  # fmt: skip
    assert code == 0
    base, variant = json.loads(text)
    assert base["parameters"] == variant["parameters"]
    assert variant["size_bytes"] < base["size_bytes"] / 3
    assert base["metric"] == variant["metric"] == "test/accuracy"
    code, text, _ = run_cli(capsys, "compress", "report", runs / "mlp", runs / "mlp-dynamic",
                            "--repeats", "2")  # fmt: skip
    assert code == 0 and "mlp-dynamic" in text and "test/accuracy" in text and "ms @32" in text


def test_export_safetensors_roundtrip(runs, capsys, tmp_path):
    from bigtrain.build.export import load_exported
    from bigtrain.cli.eval_cmd import load_run

    path = tmp_path / "m.safetensors"
    code, _, _ = run_cli(capsys, "export", runs / "mlp", "--format", "safetensors", "--out", path)
    assert code == 0
    built, _ = load_run(runs / "mlp")
    x = built.test_batches[0][0][:16]
    model = built.trainer.state.model.eval()
    with torch.no_grad():
        assert torch.equal(load_exported(path)(x), model(x))


def test_bad_input_is_one_line(runs, capsys, tmp_path):
    cases = [
        (["compress", "quantize", runs / "mlp", "--out", tmp_path / "a", "--layers", "conv2d"],
         "does not support layer type 'conv2d'"),
        (["compress", "quantize", runs / "mlp", "--out", tmp_path / "b", "--method", "qat"],
         "was not trained with a quantize: section"),
        (["compress", "quantize", runs / "qat", "--out", tmp_path / "c", "--method", "dynamic"],
         "convert it with --method qat"),
        (["compress", "quantize", runs / "mlp", "--out", runs / "mlp"], "source run itself"),
    ]  # fmt: skip
    for argv, message in cases:
        code, out, err = run_cli(capsys, *argv)
        assert code == 2, argv
        assert message in err and err.strip().count("\n") == 0, err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_onnx_of_a_quantized_variant_names_the_op(runs, capsys, tmp_path):
    pytest.importorskip("onnxruntime", reason="pip install 'bigtrain[export]'")
    pytest.importorskip("onnxscript", reason="pip install 'bigtrain[export]'")
    variant = runs / "mlp-q-onnx"
    run_cli(capsys, "compress", "quantize", runs / "mlp", "--out", variant)
    path = tmp_path / "q.onnx"
    code, _, err = run_cli(capsys, "export", variant, "--format", "onnx", "--out", path)
    assert code == 2 and "does not support quantized" in err and err.strip().count("\n") == 0
    assert not path.exists() and list(tmp_path.iterdir()) == []


class Crash(Exception):
    pass


def test_qat_resumes_bitwise(tmp_path, monkeypatch):
    from safetensors.torch import load_file

    from bigtrain.callbacks.checkpointing import Checkpointer

    argv = [*FAST, "trainer.max_steps=20", "trainer.eval_every=5", "trainer.checkpoint_every=5",
            "quantize.method=qat", "quantize.freeze_observers_step=12",
            "quantize.freeze_bn_step=12"]  # fmt: skip
    build_run("tiny/digits-mlp", argv, run_dir=tmp_path / "a", quiet=True, report=False).fit()
    real_save = Checkpointer.save

    def save(self, state):
        real_save(self, state)
        if state.step == 10:  # before the observers freeze
            raise Crash

    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "save", save)
        with pytest.raises(Crash):
            build_run("tiny/digits-mlp", argv, run_dir=tmp_path / "b", quiet=True,
                      report=False).fit()  # fmt: skip
    build_run("tiny/digits-mlp", argv, run_dir=tmp_path / "b", resume=True, quiet=True,
              report=False).fit()  # fmt: skip
    a = load_file(str(tmp_path / "a/checkpoints/step-0000020/model.safetensors"))
    b = load_file(str(tmp_path / "b/checkpoints/step-0000020/model.safetensors"))
    assert a.keys() == b.keys() and any(
        "fake_quant" in k or "activation_post_process" in k for k in a
    )
    for k in a:
        assert torch.equal(a[k], b[k]), k
