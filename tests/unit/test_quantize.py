"""Int8 quantization as plain functions: module types really change, outputs stay close to fp32,
int8 weights take a quarter of the bytes, and the plain-tensor state round-trips exactly."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from safetensors.torch import load_model, save_file
from torch import nn

from bigtrain.compress import quantize as q
from bigtrain.compress.measure import batch_of, cpu_latency, file_size, parameter_count
from bigtrain.errors import ConfigError
from bigtrain.models.cnn import CNN, CNNConfig
from bigtrain.models.mlp import MLP, MLPConfig
from bigtrain.models.rnn import RNNLM, RNNLMConfig


class WithLSTM(nn.Module):
    """An LSTM inside a parent, as bigtrain's rnn models hold theirs."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(12, 8)
        self.lstm = nn.LSTM(8, 32, 2, batch_first=True)
        self.fc = nn.Linear(32, 5)

    def forward(self, x):
        return self.fc(self.lstm(self.emb(x))[0])


def _mlp(seed=0):
    torch.manual_seed(seed)
    return MLP(64, 10, MLPConfig(hidden=[64, 32])).eval()


def _roundtrip(model, fresh, step, tmp_path):
    """Save the quantized model's state as safetensors, rebuild ``fresh``, load strictly."""
    path = tmp_path / "m.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    restored = q.restore_quantized(fresh, step)
    missing, unexpected = load_model(restored, str(path), strict=True)
    assert not missing and not unexpected
    return restored, path


def test_dynamic_mlp_changes_types_stays_close_and_quarters_bytes(tmp_path):
    model, x = _mlp(), torch.randn(50, 64)
    ref = model(x)
    before = q.weight_bytes(model)
    fresh = copy.deepcopy(model)
    qm, step = q.quantize_dynamic_int8(model)
    types = set(q.quantized_modules(qm).values())
    assert "Linear" in types and all(
        type(m).__module__.startswith("torch.ao.nn.quantized.dynamic")
        for n, m in qm.named_modules()
        if n in step["modules"]
    )
    assert not any(type(m) is nn.Linear for m in qm.modules())
    out = qm(x)
    err = (out - ref).abs().max() / ref.abs().max()
    assert 0 < err < 0.05  # changed (really int8) yet close
    after = q.weight_bytes(qm)
    assert before["int8"] == 0 and after["float"] == 0
    assert after["int8"] * 4 == before["float"]  # int8 values: a quarter of fp32
    assert all(isinstance(v, torch.Tensor) and not v.is_quantized for v in qm.state_dict().values())
    restored, path = _roundtrip(qm, fresh, step, tmp_path)
    assert torch.equal(restored(x), out)
    assert parameter_count(restored) == parameter_count(fresh)


def test_lstm_inside_a_module_is_really_quantized(tmp_path):
    torch.manual_seed(0)
    model, x = WithLSTM().eval(), torch.randint(0, 12, (4, 9))
    ref = model(x)
    fresh = copy.deepcopy(model)
    qm, step = q.quantize_dynamic_int8(model)
    assert set(step["modules"]) == {"lstm", "fc"}
    assert type(qm.lstm).__module__ == "torch.ao.nn.quantized.dynamic.modules.rnn"
    out = qm(x)
    assert 0 < (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert q.weight_bytes(qm)["int8"] == sum(
        p.numel() for n, p in fresh.named_parameters() if "weight" in n and "emb" not in n
    )
    restored, _ = _roundtrip(qm, fresh, step, tmp_path)
    assert torch.equal(restored(x), out)


def test_bigtrain_rnn_lm_lstm_is_quantized():
    torch.manual_seed(0)
    model = RNNLM.from_config(RNNLMConfig(n_embd=16, hidden=32, n_layers=1), (8,), 20).eval()
    x = torch.randint(0, 20, (2, 8))
    ref = model(x).logits
    qm, step = q.quantize_dynamic_int8(model)
    assert "LSTM" in q.quantized_modules(qm).values()
    assert (qm(x).logits - ref).abs().max() < 0.05


def test_bare_lstm_is_quantized_by_name():
    # torch.ao's type pass leaves a bare nn.LSTM (the root) alone; naming modules is what we do
    with q.quiet_ao():
        from torch.ao.quantization import quantize_dynamic

        assert type(quantize_dynamic(nn.LSTM(4, 4), {nn.LSTM})) is nn.LSTM


def test_tied_weights_stay_float():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.mid, self.head = nn.Embedding(10, 8), nn.Linear(8, 8), nn.Linear(8, 10)
            self.head.weight = self.emb.weight

        def forward(self, x):
            return self.head(self.mid(self.emb(x)))

    qm, step = q.quantize_dynamic_int8(Tied())
    assert step["modules"] == ["mid"] and type(qm.head) is nn.Linear


@pytest.mark.parametrize("qat", [False, True])
def test_static_and_qat_cnn_roundtrip(tmp_path, qat):
    torch.manual_seed(0)
    model = CNN((1, 8, 8), 10, CNNConfig(channels=[4, 8], hidden=[16], batch_norm=True)).eval()
    fresh = copy.deepcopy(model)
    x = torch.randn(40, 64)
    ref = model(x)
    if qat:
        prepared = q.prepare_static(model, torch.zeros(1), qat=True)
        opt = torch.optim.SGD(prepared.parameters(), lr=1e-3)
        for _ in range(3):
            prepared(x).pow(2).mean().backward()
            opt.step()
            opt.zero_grad()
        qm, step = q.convert_prepared(prepared), q.static_step(x[:1], "x86", "qat")
    else:
        qm, step = q.quantize_static_int8(model, [x[:20], x[20:]])
        assert (qm(x) - ref).abs().max() < 0.1 * ref.abs().max()
    assert {"ConvReLU2d", "LinearReLU", "Linear"} <= set(q.quantized_modules(qm).values())
    restored, _ = _roundtrip(qm, fresh, step, tmp_path)
    assert torch.equal(restored(x), qm(x))


def test_unsupported_layer_type_and_nothing_quantizable_are_one_line():
    with pytest.raises(ConfigError, match="does not support layer type 'conv2d'"):
        q.layer_types(["linear", "conv2d"], "dynamic")
    with pytest.raises(ConfigError, match="no Linear"):
        q.quantize_dynamic_int8(nn.Sequential(nn.Embedding(5, 3)))
    with pytest.raises(ConfigError, match="does not support layer type 'LSTM'"):
        q.prepare_static(WithLSTM(), torch.zeros(1, 3, dtype=torch.long))


def test_no_deprecation_warning_escapes():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q.quantize_dynamic_int8(_mlp())


def test_measure_helpers(tmp_path):
    model = _mlp()
    assert parameter_count(model) == sum(p.numel() for p in model.parameters())
    assert batch_of(torch.zeros(3, 4), 7).shape == (7, 4)
    lat = cpu_latency(model, torch.randn(1, 64), (1, 32), repeats=3, warmup=1)
    assert set(lat) == {1, 32} and all(v > 0 for v in lat.values())
    save_file({"w": torch.zeros(10)}, str(tmp_path / "w.safetensors"))
    assert file_size(tmp_path / "w.safetensors") > 40
