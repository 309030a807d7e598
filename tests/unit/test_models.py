"""Classic models: shapes, parameter counts by hand, layer behaviour, config errors, a real fit."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.errors import ConfigError
from bigtrain.models import (
    ACTIVATIONS,
    CNN,
    MLP,
    MODELS,
    Linear,
    LinearConfig,
    MLPConfig,
    build_model,
    count_parameters,
    make_activation,
    model_config_fields,
)
from bigtrain.models.activations import init_weights

REFERENCE = {
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "relu": F.relu,
    "leaky_relu": F.leaky_relu,
    "elu": F.elu,
    "gelu": F.gelu,
    "silu": F.silu,
}


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_matches_torch_functional(name):
    x = torch.linspace(-4, 4, 101)
    torch.testing.assert_close(make_activation(name)(x), REFERENCE[name](x))


def test_unknown_activation_lists_choices():
    with pytest.raises(ValueError, match=r"did you mean 'relu'.*sigmoid, tanh, relu"):
        make_activation("rleu")


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_mlp_shapes_for_each_activation(name):
    torch.manual_seed(0)
    model = build_model("mlp", {"hidden": [16, 8], "activation": name}, (1, 8, 8), 3)
    out = model(torch.randn(5, 1, 8, 8))
    assert out.shape == (5, 3)
    assert torch.isfinite(out).all()


def test_init_follows_activation():
    # Kaiming: std = sqrt(2 / fan_in); Xavier with tanh gain 5/3: std = gain * sqrt(2 / (in + out)).
    torch.manual_seed(0)
    relu_layer, tanh_layer, out_layer = (
        nn.Linear(512, 256),
        nn.Linear(512, 256),
        nn.Linear(512, 256),
    )
    init_weights(relu_layer, "relu")
    init_weights(tanh_layer, "tanh")
    init_weights(out_layer, None)
    assert relu_layer.weight.std().item() == pytest.approx(math.sqrt(2 / 512), rel=0.02)
    assert tanh_layer.weight.std().item() == pytest.approx(5 / 3 * math.sqrt(2 / 768), rel=0.02)
    assert out_layer.weight.std().item() == pytest.approx(math.sqrt(2 / 768), rel=0.02)
    assert torch.count_nonzero(relu_layer.bias) == 0


def test_mlp_parameter_counts_by_hand():
    assert count_parameters(MLP(64, 10, MLPConfig(hidden=[128]))) == 64 * 128 + 128 + 128 * 10 + 10
    two = MLP(64, 10, MLPConfig(hidden=[32, 16]))
    assert count_parameters(two) == (64 * 32 + 32) + (32 * 16 + 16) + (16 * 10 + 10)
    bn = MLP(64, 10, MLPConfig(hidden=[128], batch_norm=True))
    assert count_parameters(bn) == 9610 + 2 * 128  # gamma, beta (running stats are buffers)
    assert count_parameters(MLP(64, 10, MLPConfig(hidden=[128], bias=False))) == 64 * 128 + 1280
    logistic = build_model("mlp", {"hidden": []}, (64,), 10)
    assert count_parameters(logistic) == 64 * 10 + 10
    assert isinstance(logistic.net[0], nn.Linear) and len(logistic.net) == 1


def test_count_parameters_trainable_only():
    model = MLP(4, 2, MLPConfig(hidden=[3]))
    model.net[0].weight.requires_grad_(False)
    assert count_parameters(model) == 4 * 3 + 3 + 3 * 2 + 2
    assert count_parameters(model, trainable_only=True) == 3 + 3 * 2 + 2


def test_dropout_only_in_train_mode():
    torch.manual_seed(0)
    with_dropout = MLP(20, 4, MLPConfig(hidden=[64], dropout=0.5))
    torch.manual_seed(0)
    without = MLP(20, 4, MLPConfig(hidden=[64]))  # same init order -> same weights
    x = torch.randn(8, 20)
    with_dropout.eval()
    torch.testing.assert_close(with_dropout(x), without(x))
    with_dropout.train()
    dropped = {}
    with_dropout.net[2].register_forward_hook(lambda m, i, o: dropped.update(o=o, i=i[0]))
    y1, y2 = with_dropout(x), with_dropout(x)
    assert not torch.allclose(y1, y2)
    zeroed = (dropped["o"] == 0) & (dropped["i"] != 0)
    assert 0.4 < zeroed.float().sum().item() / (dropped["i"] != 0).sum().item() < 0.6
    kept = dropped["o"] != 0
    torch.testing.assert_close(dropped["o"][kept], dropped["i"][kept] * 2)  # scaled by 1/(1-p)


def test_batch_norm_normalises_in_train_and_uses_running_stats_in_eval():
    torch.manual_seed(0)
    model = MLP(10, 2, MLPConfig(hidden=[32], batch_norm=True))
    seen = {}
    model.net[1].register_forward_hook(lambda m, i, o: seen.update(o=o))
    x = torch.randn(256, 10) * 3 + 5
    model.train()
    model(x)
    mean, var = seen["o"].mean(0), seen["o"].var(0, unbiased=False)
    torch.testing.assert_close(mean, torch.zeros(32), atol=1e-5, rtol=0)
    torch.testing.assert_close(var, torch.ones(32), atol=1e-3, rtol=0)
    bn = model.net[1]
    assert bn.running_mean.abs().sum() > 0  # updated by the train-mode pass
    model.eval()
    model(x[:1])  # one example: only possible with running statistics
    h = model.net[0](x[:1])
    expected = (h - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(seen["o"], expected)


def test_layer_norm_option():
    model = MLP(10, 2, MLPConfig(hidden=[16], layer_norm=True))
    assert isinstance(model.net[1], nn.LayerNorm)
    assert count_parameters(model) == (10 * 16 + 16) + 2 * 16 + (16 * 2 + 2)


def test_cnn_digits_shape_and_parameter_count():
    model = build_model("cnn", {}, (1, 8, 8), 10)
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)
    # 8x8 -> pool -> 4x4 -> pool -> 2x2; convs have no bias because batch norm follows.
    convs = 1 * 32 * 9 + 2 * 32 + 32 * 64 * 9 + 2 * 64
    head = 64 * 2 * 2 * 128 + 128 + 128 * 10 + 10
    assert count_parameters(model) == convs + head


def test_cnn_mnist_shape_and_parameter_count():
    model = build_model("cnn", {"batch_norm": False, "hidden": []}, (1, 28, 28), 10)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    convs = (1 * 32 * 9 + 32) + (32 * 64 * 9 + 64)  # with biases when there is no batch norm
    assert count_parameters(model) == convs + 64 * 7 * 7 * 10 + 10


@pytest.mark.parametrize(
    "params, shape",
    [
        ({"channels": [4, 4, 4]}, (1, 4, 4)),  # 4 -> 2 -> 1, third block not pooled
        ({"channels": [4, 4], "pool": "avg", "kernel_size": 5}, (3, 7, 5)),  # odd sizes floor
        ({"channels": [4], "pool": "none"}, (2, 6, 6)),
        ({"channels": [4, 8], "global_pool": True}, (1, 28, 28)),
    ],
)
def test_cnn_flat_size_matches_a_real_forward(params, shape):
    model = build_model("cnn", params, shape, 5)
    features = model.features(torch.randn(2, *shape))
    assert features[0].numel() == model.flat_features
    assert model(torch.randn(2, *shape)).shape == (2, 5)


def test_cnn_accepts_flat_and_channel_less_batches():
    torch.manual_seed(0)
    model = build_model("cnn", {"channels": [4]}, (8, 8), 3).eval()
    x = torch.randn(2, 1, 8, 8)
    torch.testing.assert_close(model(x.reshape(2, 64)), model(x))
    torch.testing.assert_close(model(x.reshape(2, 8, 8)), model(x))


def test_linear_recovers_slope_and_intercept():
    torch.manual_seed(0)
    x = torch.linspace(-1, 1, 50).unsqueeze(1)
    y = 3 * x + 2 + 0.1 * torch.randn_like(x)
    model = build_model("linear", {}, (1,), 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(300):
        opt.zero_grad()
        F.mse_loss(model(x), y).backward()
        opt.step()
    slope, intercept = np.polyfit(x.squeeze(1).numpy(), y.squeeze(1).numpy(), 1)
    weight, bias = model.coefficients()
    assert weight.item() == pytest.approx(slope, abs=1e-4)
    assert bias.item() == pytest.approx(intercept, abs=1e-4)
    weight.zero_()  # a copy: the model is untouched
    assert model.linear.weight.item() == pytest.approx(slope, abs=1e-4)
    assert Linear(3, 2, LinearConfig(bias=False)).coefficients()[1] is None


def test_registry_and_fields():
    assert {"mlp", "cnn", "linear"} <= set(MODELS.names())
    assert MODELS.get("cnn") is CNN and MODELS.get("mlp").Config is MLPConfig
    assert model_config_fields("mlp") == [
        "hidden",
        "activation",
        "dropout",
        "batch_norm",
        "layer_norm",
        "bias",
    ]
    assert model_config_fields("linear") == ["bias"]


@pytest.mark.parametrize(
    "name, params, shape, message",
    [
        ("mlp", {"hiden": [8]}, (4,), r"^unknown key 'model\.hiden' \(did you mean 'hidden'\?\)"),
        ("mlp", {"hidden": "abc"}, (4,), r"^model\.hidden: expected list\[int\], got 'abc'$"),
        ("mlp", {"hidden": [8, "x", "y"]}, (4,), r"^model\.hidden: expected list\[int\], got \["),
        ("mlp", {"dropout": 1.0}, (4,), r"^model\.dropout: must be in \[0, 1\), got 1\.0$"),
        ("mlp", {"activation": "rleu"}, (4,), r"^model\.activation: .*did you mean 'relu'"),
        ("cnn", {"kernel_size": 2}, (1, 8, 8), r"^model\.kernel_size: must be an odd number"),
        ("cnn", {"pool": "mx"}, (1, 8, 8), r"^model\.pool: must be one of max, avg, none"),
        ("cnn", {}, (64,), r"^model 'cnn': cnn needs image inputs shaped \(C, H, W\)"),
        ("mlpp", {}, (4,), r"^unknown model 'mlpp' \(did you mean 'mlp'\?\)"),
    ],
)
def test_config_errors_are_one_readable_line(name, params, shape, message):
    with pytest.raises(ConfigError, match=message) as info:
        build_model(name, params, shape, 2)
    assert "\n" not in str(info.value)


def test_build_model_coerces_and_ignores_matching_name():
    model = build_model("mlp", {"name": "mlp", "hidden": (8,), "dropout": 0}, (4,), 2)
    assert model.cfg == MLPConfig(hidden=[8], dropout=0.0)


def test_mlp_fits_digits():
    from sklearn.datasets import load_digits

    torch.manual_seed(0)
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0  # (1797, 64) in [0, 1]
    y = torch.tensor(digits.target)
    model = build_model("mlp", {"hidden": [64]}, (64,), 10)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, len(x), (64,), generator=gen)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    with torch.no_grad():
        accuracy = (model(x).argmax(1) == y).float().mean().item()
    assert accuracy > 0.9
