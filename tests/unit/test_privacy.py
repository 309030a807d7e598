"""DP-SGD pieces against hand computations and Opacus' own accountant."""

import copy
import math
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

pytest.importorskip("opacus", reason="pip install 'bigtrain[privacy]'")

from opacus.accountants import RDPAccountant  # noqa: E402
from opacus.accountants.utils import get_noise_multiplier  # noqa: E402

from bigtrain.build import build  # noqa: E402
from bigtrain.config import load_recipe  # noqa: E402
from bigtrain.data.loader import InMemoryLoader  # noqa: E402
from bigtrain.errors import CheckpointError, ConfigError  # noqa: E402
from bigtrain.models.cnn import CNN, CNNConfig  # noqa: E402
from bigtrain.privacy import (  # noqa: E402
    MAX_NOISE_MULTIPLIER,
    DPTask,
    PoissonLoader,
    PrivacyAccountant,
    calibrate_noise,
    epsilon_after,
    make_dp_optimizer,
    make_private_model,
)
from bigtrain.tasks import ClassificationTask  # noqa: E402


class TinyAttention(nn.Module):
    """Embedding -> one SDPA self-attention (own q/k/v Linear) -> LayerNorm -> mean -> Linear."""

    def __init__(self, vocab=11, dim=8, classes=3):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, tokens):
        h = self.embed(tokens)  # (B, T, C)
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        h = self.norm(h + F.scaled_dot_product_attention(q, k, v))
        return self.head(h.mean(dim=1))


def per_example_grads(model, x, y):
    """One backward per example: the gradients DP-SGD must clip, by a loop."""
    grads = []
    for i in range(len(x)):
        model.zero_grad()
        F.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    return grads


def test_dp_step_is_the_mean_of_clipped_per_example_gradients():
    torch.manual_seed(0)
    model = TinyAttention()
    reference = copy.deepcopy(model)
    x, y = torch.randint(0, 11, (6, 5)), torch.randint(0, 3, (6,))
    grads = per_example_grads(reference, x, y)
    norms = torch.stack([torch.sqrt(sum((g**2).sum() for g in gs)) for gs in grads])
    clip = float(norms.median())  # some examples are clipped, some are not
    expected_batch = 10  # the divisor is the expected batch, not the drawn one
    want = [
        sum(gs[j] * min(1.0, clip / (float(n) + 1e-6)) for gs, n in zip(grads, norms))
        / expected_batch
        for j in range(len(grads[0]))
    ]

    model = make_private_model(model, fix_modules=False)
    task = DPTask(ClassificationTask(3), list(model.parameters()))
    opt = make_dp_optimizer(torch.optim.SGD(model.parameters(), lr=1.0), 0.0, clip, expected_batch)
    task.forward_backward(model, (x, y), 1.0, lambda loss: loss.backward())
    for j, p in enumerate(model.parameters()):  # Embedding, Linear on (B, T, C), LayerNorm
        torch.testing.assert_close(p.grad_sample, torch.stack([gs[j] for gs in grads]))
    opt.pre_step()  # clip, sum, noise (none), divide
    for p, w in zip(model.parameters(), want):
        torch.testing.assert_close(p.grad, w, rtol=1e-5, atol=1e-7)


def test_empty_poisson_batch_is_a_noise_only_update():
    torch.manual_seed(0)
    model = make_private_model(nn.Sequential(nn.Linear(4, 3)), fix_modules=False)
    task = DPTask(ClassificationTask(3), list(model.parameters()))
    sigma, clip, batch = 2.0, 0.5, 8
    opt = make_dp_optimizer(torch.optim.SGD(model.parameters(), lr=1.0), sigma, clip, batch)
    out = task.forward_backward(
        model,
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)),
        1.0,
        lambda loss: pytest.fail("an empty batch has no backward"),
    )
    assert out.n == 0 and float(out.loss) == 0.0  # no forward, no backward, a finite loss
    torch.manual_seed(1)
    opt.pre_step()
    torch.manual_seed(1)  # Opacus draws the noise from the global generator, param by param
    for p in model.parameters():
        noise = torch.normal(0, sigma * clip, p.shape)
        torch.testing.assert_close(p.grad, noise / batch)


def test_accountant_epsilon_is_opacus_rdp_accountant():
    delta, q = 1e-5, 0.07
    acc = PrivacyAccountant(delta, 2.0, q, 1.0, planned_steps=150)
    for _ in range(100):
        acc.step()
    for _ in range(50):
        acc.step(1.5)  # a second segment (a resumed run's noise could differ)
    ref = RDPAccountant()
    for sigma, steps in ((2.0, 100), (1.5, 50)):
        for _ in range(steps):
            ref.step(noise_multiplier=sigma, sample_rate=q)
    assert acc.accountant.history == ref.history == [(2.0, q, 100), (1.5, q, 50)]
    assert acc.epsilon() == pytest.approx(ref.get_epsilon(delta), rel=1e-12)
    restored = PrivacyAccountant(delta, 2.0, q, 1.0, planned_steps=150)
    restored.load_state_dict(acc.state_dict())
    assert restored.epsilon() == acc.epsilon()


def test_calibrated_noise_spends_the_target():
    q, steps = 32 / 364, 200
    sigma = calibrate_noise(1.0, 1e-5, q, steps)
    assert sigma == get_noise_multiplier(
        target_epsilon=1.0, target_delta=1e-5, sample_rate=q, steps=steps, epsilon_tolerance=0.01
    )
    assert 0.99 <= epsilon_after(sigma, q, steps, 1e-5) <= 1.0


def test_impossible_budget_names_the_smallest_epsilon():
    q, steps = 0.1, 300
    smallest = epsilon_after(MAX_NOISE_MULTIPLIER, q, steps, 1e-5)
    with pytest.raises(ConfigError) as e:
        calibrate_noise(0.05, 1e-5, q, steps)
    msg = str(e.value)
    assert "\n" not in msg and "smallest epsilon reachable" in msg and f"{smallest:.3g}" in msg


def test_poisson_loader_resumes_bitwise_mid_epoch():
    x, y = torch.randn(50, 3), torch.arange(50)
    straight = PoissonLoader(x, y, batch_size=10, steps_per_epoch=5, seed=3)
    want = [b for _ in range(3) for b in straight]  # three epochs, as the loop iterates them
    first = PoissonLoader(x, y, batch_size=10, steps_per_epoch=5, seed=3)
    list(first)
    it = iter(first)
    for _ in range(3):
        next(it)
    saved = first.state_dict()  # epoch 1, 3 draws in: a checkpoint mid-epoch
    resumed = PoissonLoader(x, y, batch_size=10, steps_per_epoch=5, seed=99)
    resumed.load_state_dict(saved)
    got = [b for _ in range(2) for b in resumed]  # the epoch's 2 remaining draws, then epoch 2
    assert len(got) == 7 and resumed.epoch == 3
    for (xa, ya), (xb, yb) in zip(want[8:], got):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(CheckpointError):
        PoissonLoader(x[:40], y[:40], 10, 4).load_state_dict(saved)


def test_poisson_batches_are_independent_draws_of_rate_q():
    n, batch, draws = 40, 4, 3000
    loader = PoissonLoader(torch.randn(n, 2), torch.arange(n), batch, steps_per_epoch=draws)
    sizes = torch.tensor([len(yb) for _, yb in loader], dtype=torch.float64)
    q = batch / n
    # Binomial(n, q) sizes: mean q*n, variance n*q*(1-q), P(empty) = (1-q)^n
    assert sizes.mean() == pytest.approx(q * n, abs=4 * math.sqrt(n * q * (1 - q) / draws))
    assert sizes.var() == pytest.approx(n * q * (1 - q), rel=0.1)
    assert (sizes == 0).float().mean() == pytest.approx((1 - q) ** n, abs=0.01)
    empty = next(
        b for b in PoissonLoader(torch.randn(n, 2), torch.arange(n), 1, 200) if not len(b[1])
    )
    assert empty[0].shape == (0, 2)
    assert loader.epoch == 1 and len(loader) == draws


def test_batchnorm_is_refused_with_both_fixes_and_fixed_to_groupnorm():
    cnn = CNN((1, 8, 8), 10, CNNConfig(channels=[4], hidden=[]))
    with pytest.raises(ConfigError) as e:
        make_private_model(cnn, fix_modules=False, model_fields={"batch_norm": True})
    msg = str(e.value)
    assert "\n" not in msg
    assert "layer 'features.1' (BatchNorm2d)" in msg
    assert "model.batch_norm=false" in msg and "privacy.fix_modules=true" in msg
    fixed = make_private_model(cnn, fix_modules=True)
    assert isinstance(fixed.features[1], nn.GroupNorm)
    out = fixed(torch.randn(3, 1, 8, 8))
    F.cross_entropy(out, torch.tensor([0, 1, 2])).backward()
    assert all(p.grad_sample.shape[0] == 3 for p in fixed.parameters())


@pytest.mark.parametrize(
    "layer,replacement",
    [
        (nn.LSTM(4, 4, batch_first=True), "DPLSTM"),
        (nn.MultiheadAttention(4, 2), "DPMultiheadAttention"),
    ],
)
def test_layers_opacus_replaces_are_named(layer, replacement):
    with pytest.raises(ConfigError, match=f"layer '0' .*fix_modules=true .*{replacement}"):
        make_private_model(nn.Sequential(layer), fix_modules=False)


def test_privacy_section_needs_one_way_to_set_the_noise():
    with pytest.raises(ConfigError, match="target_epsilon .* or privacy.noise_multiplier"):
        load_recipe("breast-cancer-dp", ["privacy.target_epsilon=null"])
    with pytest.raises(ConfigError, match="not both"):
        load_recipe("breast-cancer-dp", ["privacy.noise_multiplier=1.0"])


@pytest.mark.parametrize(
    "override,words",
    [
        ("trainer.grad_accum=2", "trainer.grad_accum must be 1"),
        ("trainer.clip_grad_norm=1.0", "remove trainer.clip_grad_norm"),
        ("regularization.l2=0.01", "use optim.weight_decay"),
        ("trainer.precision=bf16", "trainer.precision=fp32"),
        ("privacy.delta=0.5", "not below 1/N"),
    ],
)
def test_settings_dp_cannot_honour_are_refused(override, words):
    cfg = load_recipe("tiny/breast-cancer-dp", [override, "trainer.device=cpu"])
    with pytest.raises(ConfigError, match=words) as e:
        build(cfg, quiet=True)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("poisson", [True, False])
def test_build_wires_the_sampler_optimizer_and_accountant(poisson):
    cfg = load_recipe("tiny/breast-cancer-dp", [f"privacy.poisson_sampling={str(poisson).lower()}"])
    built = build(cfg, quiet=True)
    loader, opt = built.trainer.state.train_data, built.trainer.state.optimizer
    n = built.data.train.x.shape[0]
    assert isinstance(loader, PoissonLoader if poisson else InMemoryLoader)
    assert len(loader) == -(-n // 16)  # an epoch: as many steps as the shuffled loader's
    acc = built.callbacks["privacy"]
    # without Poisson sampling the accounting still assumes it, at the same rate (as Opacus)
    assert acc.sample_rate == 16 / n and opt.expected_batch_size == 16
    assert opt.noise_multiplier == acc.noise_multiplier == 1.0 and opt.max_grad_norm == 1.0
    assert isinstance(built.task, DPTask)
    assert not any(k.startswith("_module") for k in built.model.state_dict())  # plain names


def test_a_longer_resumed_run_keeps_its_noise_and_says_where_epsilon_ends():
    q, delta = 0.05, 1e-5
    first = PrivacyAccountant(delta, 2.0, q, 1.0, planned_steps=20)
    for _ in range(10):
        first.step()
    said, noise = [], []
    longer = PrivacyAccountant(  # max_steps raised to 30: calibration chose less noise
        delta, 1.5, q, 1.0, planned_steps=30, set_noise=noise.append, report=said.append
    )
    longer.load_state_dict(first.state_dict())
    assert longer.noise_multiplier == 2.0 and noise == [2.0]
    assert f"end at epsilon {epsilon_after(2.0, q, 30, delta):.3g}" in said[0]


def test_without_opacus_a_privacy_recipe_names_the_pip_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "opacus", None)  # import opacus -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'bigtrain\[privacy\]'"):
        build(load_recipe("tiny/breast-cancer-dp"), quiet=True)
