"""Optimizers: formula oracles where bigtrain adds behaviour, wiring checks where torch does the math.

LAMB and Lion are bigtrain's own code: checked against the papers' formulas written out here.
For torch's optimizers bigtrain adds the decay/no-decay grouping and passes the arguments on:
``test_wiring_*`` checks that (the same torch class, fed the same groups, ends bit-for-bit equal);
Adafactor's decoupled decay and the grouping's effect on a step are checked against formulas.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from bigtrain.errors import ConfigError
from bigtrain.optim import OPTIMIZERS, OptimConfig, build_optimizer, param_groups

STEPS = 5


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():
        model[3].bias.zero_()  # a zero-norm tensor: LAMB's trust ratio must fall back to 1
    return model


def batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 4, generator=g), torch.randn(6, 3, generator=g)) for _ in range(STEPS)]


def train(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    for x, y in batches():
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def split(model: nn.Module, wd: float) -> list[dict]:
    """The decay/no-decay split written out by hand (matrices decay, vectors don't)."""
    params = list(model.parameters())
    return [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": wd},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]


# (OptimConfig fields, the torch class, the same arguments spelled for torch)
TORCH_CASES = [
    ({"name": "sgd", "lr": 0.1}, torch.optim.SGD, {}),
    (
        {"name": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True},
        torch.optim.SGD,
        {"momentum": 0.9, "nesterov": True},
    ),
    ({"name": "adagrad", "lr": 0.1, "eps": 1e-8}, torch.optim.Adagrad, {"eps": 1e-8}),
    (
        {"name": "rmsprop", "lr": 0.01, "alpha": 0.9, "momentum": 0.5},
        torch.optim.RMSprop,
        {"alpha": 0.9, "momentum": 0.5},
    ),
    ({"name": "adam", "lr": 0.01, "betas": (0.8, 0.99)}, torch.optim.Adam, {"betas": (0.8, 0.99)}),
    ({"name": "adamw", "lr": 0.01, "eps": 1e-6}, torch.optim.AdamW, {"eps": 1e-6}),
    ({"name": "adafactor", "lr": 0.01}, torch.optim.Adafactor, {}),
    ({"name": "adam", "lr": 0.01, "fused": True}, torch.optim.Adam, {"fused": True}),
]


@pytest.mark.parametrize(("fields", "torch_cls", "torch_args"), TORCH_CASES)
def test_wiring_torch_backed_optimizers_match_torch_bit_for_bit(fields, torch_cls, torch_args):
    # wiring, not an oracle: torch against itself, through bigtrain's factory and groups
    wd = 0.1
    ours, ref = tiny_model(), tiny_model()
    opt = build_optimizer(ours, OptimConfig(weight_decay=wd, **fields))
    assert type(opt) is torch_cls
    impl = {} if "fused" in torch_args else {"foreach": True}  # foreach is our default
    train(ours, opt)
    train(ref, torch_cls(split(ref, wd), lr=fields["lr"], **torch_args, **impl))
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(ours[0].weight, tiny_model()[0].weight)  # it did train


def lamb_reference(model: nn.Module, lr, betas, eps, wd) -> None:
    """LAMB as in You et al. (2019), one tensor at a time, written independently of lamb.py."""
    b1, b2 = betas
    state = {p: (torch.zeros_like(p), torch.zeros_like(p)) for p in model.parameters()}
    for t, (x, y) in enumerate(batches(), start=1):
        model.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                m, v = state[p]
                m = b1 * m + (1 - b1) * p.grad
                v = b2 * v + (1 - b2) * p.grad**2
                state[p] = (m, v)
                r = (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps)
                u = r + (wd if p.ndim >= 2 else 0.0) * p
                w_norm, u_norm = p.norm().item(), u.norm().item()
                trust = w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0
                p -= lr * trust * u


def lion_reference(model: nn.Module, lr, betas, wd) -> None:
    """Lion as in Chen et al. (2023), Algorithm 2, one tensor at a time."""
    b1, b2 = betas
    moms = {p: torch.zeros_like(p) for p in model.parameters()}
    for x, y in batches():
        model.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                g, m = p.grad, moms[p]
                c = b1 * m + (1 - b1) * g
                p -= lr * (torch.sign(c) + (wd if p.ndim >= 2 else 0.0) * p)
                moms[p] = b2 * m + (1 - b2) * g


def test_lamb_matches_paper_formula():
    ours, ref = tiny_model(), tiny_model()
    cfg = OptimConfig(name="lamb", lr=0.02, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-6)
    train(ours, build_optimizer(ours, cfg))
    lamb_reference(ref, lr=0.02, betas=(0.9, 0.99), eps=1e-6, wd=0.1)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert ours[3].bias.abs().sum() > 0  # the zero-norm bias moved (trust ratio 1, not 0)


def test_lion_matches_paper_formula():
    ours, ref = tiny_model(), tiny_model()
    cfg = OptimConfig(name="lion", lr=1e-3, weight_decay=0.5, betas=(0.9, 0.99))
    train(ours, build_optimizer(ours, cfg))
    lion_reference(ref, lr=1e-3, betas=(0.9, 0.99), wd=0.5)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_lion_step_has_size_lr_per_coordinate():
    # sign updates: with wd=0 every coordinate with a non-zero gradient moves by exactly lr
    p = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    opt = OPTIMIZERS.get("lion")([p], lr=0.01, weight_decay=0.0)
    (p * torch.tensor([5.0, -0.1, 1e-4])).sum().backward()
    opt.step()
    torch.testing.assert_close(p.detach(), torch.tensor([0.99, -1.99, 2.99]))


def adafactor_reference(model: nn.Module, lr, wd, eps1=None, eps2=1e-3, d=1.0, c=-0.8) -> None:
    """Adafactor (Shazeer & Stern 2018) as torch.optim.Adafactor documents it, one tensor at a
    time, with decoupled decay ``w -= lr * wd * w`` on matrices only (bigtrain's grouping)."""
    eps1 = torch.finfo(torch.float32).eps if eps1 is None else eps1
    rms = lambda a: a.pow(2).mean().sqrt().item()  # noqa: E731
    state: dict = {}
    for t, (x, y) in enumerate(batches(), start=1):
        model.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                g = p.grad
                weight = t**c  # 1 - beta2_t: the second-moment decay rises towards 1
                alpha = max(eps2, rms(p)) * min(lr, 1 / math.sqrt(t))  # from w before decay
                if p.ndim >= 2:  # decoupled decay, then factored row and column means of g^2
                    p -= lr * wd * p
                    r, col = state.get(p, (torch.zeros(p.shape[0], 1), torch.zeros(1, p.shape[1])))
                    r = (1 - weight) * r + weight * (g**2).mean(dim=1, keepdim=True)
                    col = (1 - weight) * col + weight * (g**2).mean(dim=0, keepdim=True)
                    state[p] = (r, col)
                    v = r @ col / max(r.mean().item(), eps1)
                else:
                    v = (1 - weight) * state.get(p, torch.zeros_like(p)) + weight * g**2
                    state[p] = v
                u = g / v.clamp(min=eps1**2).sqrt()
                p -= alpha / max(1.0, rms(u) / d) * u


def test_adafactor_matches_formula_with_decoupled_decay_on_matrices_only():
    ours, ref = tiny_model(), tiny_model()
    cfg = OptimConfig(name="adafactor", lr=0.02, weight_decay=0.5)
    train(ours, build_optimizer(ours, cfg))
    adafactor_reference(ref, lr=0.02, wd=0.5)
    for a, b in zip(ours.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", ["adamw", "adafactor", "lion"])
def test_decoupled_decay_shrinks_matrices_by_lr_wd_and_leaves_vectors_alone(name):
    # zero gradients: the whole update is the decay, so a matrix becomes exactly (1 - lr*wd) w
    # while biases and LayerNorm scales, in the no-decay group, do not move at all
    lr, wd = 0.01, 0.1
    model = tiny_model()
    with torch.no_grad():
        model[3].bias.fill_(0.5)  # a non-zero vector: decaying it would show
    opt = build_optimizer(model, OptimConfig(name=name, lr=lr, weight_decay=wd))
    matrices = [model[0].weight, model[3].weight]
    vectors = [model[0].bias, model[1].weight, model[1].bias, model[3].bias]
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == wd and no_decay["weight_decay"] == 0.0
    assert [id(p) for p in decay["params"]] == [id(p) for p in matrices]
    assert [id(p) for p in no_decay["params"]] == [id(p) for p in vectors]
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    for p, old in zip(model.parameters(), before):
        if p.ndim >= 2:
            torch.testing.assert_close(p.detach(), old - lr * wd * old, rtol=1e-6, atol=0)
            assert not torch.equal(p.detach(), old)
        else:
            assert torch.equal(p.detach(), old)


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.conv = nn.Conv1d(4, 4, 3)
        self.bn = nn.BatchNorm1d(4)
        self.fc = nn.Linear(4, 10)
        self.ln = nn.LayerNorm(4)
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.fc.weight  # tied: must appear once


def test_param_groups_split_matrices_from_vectors():
    net = Net()
    groups = param_groups(net, weight_decay=0.05)
    decay, no_decay = groups
    ids = lambda ps: {id(p) for p in ps}  # noqa: E731
    assert decay["name"] == "decay" and decay["weight_decay"] == 0.05
    assert no_decay["name"] == "no_decay" and no_decay["weight_decay"] == 0.0
    assert all(g["lr_scale"] == 1.0 for g in groups)
    assert ids(decay["params"]) == ids([net.emb.weight, net.conv.weight, net.fc.weight])
    assert ids(no_decay["params"]) == ids(
        [net.conv.bias, net.bn.weight, net.bn.bias, net.fc.bias, net.ln.weight, net.ln.bias]
    )
    assert len(decay["params"]) == 3  # tied weight once, frozen layer left out

    (everything,) = param_groups(net, weight_decay=0.05, decay_filter="all")
    assert len(everything["params"]) == 9


def test_build_optimizer_uses_groups_and_foreach():
    opt = build_optimizer(Net(), OptimConfig(name="adamw", weight_decay=0.1))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    assert [g["lr_scale"] for g in opt.param_groups] == [1.0, 1.0]
    assert opt.defaults["foreach"] is True


def test_field_that_does_not_apply_is_an_error():
    with pytest.raises(ConfigError) as e:
        build_optimizer(tiny_model(), OptimConfig(name="adam", momentum=0.9))
    assert str(e.value) == (
        "optim.momentum does not apply to 'adam' (it takes: lr, weight_decay, betas, eps, "
        "foreach, fused)"
    )
    with pytest.raises(ConfigError, match="optim.eps does not apply to 'lion'"):
        build_optimizer(tiny_model(), OptimConfig(name="lion", eps=1e-8))


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"name": "adma"}, "unknown optimizer 'adma' (did you mean 'adam'?)"),
        ({"name": "sgd", "nesterov": True}, "optim.nesterov needs optim.momentum > 0"),
        ({"name": "adam", "fused": True, "foreach": True}, "cannot both be true"),
    ],
)
def test_bad_optimizer_configs_are_config_errors(fields, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        build_optimizer(tiny_model(), OptimConfig(**fields))


def test_every_registered_optimizer_trains_the_tiny_model():
    x, y = batches()[0]
    for name in OPTIMIZERS.names():
        if name == "sparse_adam":  # sparse gradients only: test_recommender.py trains it
            continue
        model = tiny_model()
        opt = build_optimizer(model, OptimConfig(name=name, lr=1e-2, weight_decay=0.01))
        losses = []
        for _ in range(20):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x), y)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        assert math.isfinite(losses[-1]) and losses[-1] < losses[0], name
