"""Export: safetensors with what rebuilds the model (round trip, equal outputs) and ONNX checked
against onnxruntime at another batch size / sequence length; failures are one line and leave
nothing at PATH."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from safetensors.torch import save_file

from bigtrain.build.export import load_exported, model_io, save_exported
from bigtrain.compress.quantize import quantize_dynamic_int8
from bigtrain.errors import CheckpointError, ConfigError
from bigtrain.models import build_model

PIP = "pip install 'bigtrain[export]'"
HAS_ONNX = all(importlib.util.find_spec(m) for m in ("onnx", "onnxscript", "onnxruntime"))
needs_onnx = pytest.mark.skipif(not HAS_ONNX, reason=PIP)


def _mlp():
    torch.manual_seed(0)
    return build_model("mlp", {"hidden": [32, 16]}, (64,), 10).eval()


def _gpt():
    torch.manual_seed(0)
    params = {"n_layer": 2, "n_head": 2, "n_embd": 32, "position": "rotary", "bias": False}
    return build_model("gpt", params, (16,), 20).eval()


def test_safetensors_roundtrip_equal_outputs(tmp_path):
    model, x = _mlp(), torch.randn(7, 64)
    io = model_io(model, x)
    assert io == {"input_shape": [64], "input_dtype": "float32", "num_outputs": 10}
    path = save_exported(model, tmp_path / "m.safetensors", name="mlp",
                         params={"hidden": [32, 16]}, io=io)  # fmt: skip
    rebuilt = load_exported(path)
    assert torch.equal(rebuilt(x), model(x))


def test_safetensors_roundtrip_gpt_tied_and_quantized(tmp_path):
    model = _gpt()
    x = torch.randint(0, 20, (3, 16))
    rebuilt = load_exported(
        save_exported(
            model,
            tmp_path / "g.safetensors",
            name="gpt",
            params={**vars(model.config), "moe": vars(model.config.moe)},
            io=model_io(model, x),
        )  # fmt: skip
    )
    assert rebuilt.lm_head.weight is rebuilt.transformer.wte.weight  # the tie survives
    assert torch.equal(rebuilt(x).logits, model(x).logits)
    mlp = _mlp()
    qm, step = quantize_dynamic_int8(mlp)
    xf = torch.randn(4, 64)
    path = save_exported(qm, tmp_path / "q.safetensors", name="mlp",
                         params={"hidden": [32, 16]}, io=model_io(qm, xf), steps=[step])  # fmt: skip
    assert torch.equal(load_exported(path)(xf), qm(xf))


def test_not_an_export_is_one_line(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="no 'bigtrain' metadata"):
        load_exported(tmp_path / "plain.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a file")
    with pytest.raises(CheckpointError, match="corrupt"):
        load_exported(tmp_path / "junk.safetensors")


def test_missing_onnx_names_the_pip_line(monkeypatch):
    from bigtrain.export import onnx as ex

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "onnxscript" else real(name, *a),
    )
    with pytest.raises(ConfigError, match=r"onnxscript: pip install 'bigtrain\[export\]'"):
        ex.require_onnx()


@needs_onnx
def test_onnx_mlp_matches_onnxruntime_at_another_batch(tmp_path):
    from bigtrain.export.onnx import export_onnx

    check = export_onnx(_mlp(), torch.randn(2, 64), tmp_path / "m.onnx")
    print(f"max abs diff {check['max_abs_diff']:.3g}")
    assert check["batch"] != 2 and check["max_abs_diff"] <= 1e-4
    assert (tmp_path / "m.onnx").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]  # no temporary left


@needs_onnx
def test_onnx_unsupported_op_is_one_line_and_writes_nothing(tmp_path):
    from bigtrain.export.onnx import export_onnx

    qm, _ = quantize_dynamic_int8(_mlp())
    with pytest.raises(ConfigError, match="does not support quantized") as e:
        export_onnx(qm, torch.randn(2, 64), tmp_path / "q.onnx")
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


@needs_onnx
@pytest.mark.slow  # the dynamo exporter takes ~20 s a model on a busy 2-core machine
def test_onnx_gpt_dynamic_batch_and_sequence(tmp_path):
    from bigtrain.export.onnx import export_onnx

    check = export_onnx(_gpt(), torch.randint(0, 20, (2, 16)), tmp_path / "g.onnx", sequence=True)
    print(f"max abs diff {check['max_abs_diff']:.3g}")
    assert (check["batch"], check["seq"]) == (5, 8) and check["max_abs_diff"] <= 1e-4
