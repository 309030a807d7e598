"""MoEMLP: dense equivalence, capacity dropping against a slow reference, Switch aux loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bigtrain.models.moe import MoEConfig, MoEMLP, load_balancing_loss


def expert(moe: MoEMLP, e: int, x: torch.Tensor) -> torch.Tensor:
    h = x @ moe.w_fc[e] + (0 if moe.b_fc is None else moe.b_fc[e])
    return F.gelu(h) @ moe.w_proj[e] + (0 if moe.b_proj is None else moe.b_proj[e])


def reference(moe: MoEMLP, x: torch.Tensor) -> torch.Tensor:
    """Token-by-token GShard routing: first choices of all tokens, then second choices, ..."""
    probs = (x @ moe.router.weight.T).softmax(-1)
    top_p, top_i = probs.topk(moe.top_k, dim=-1)
    gates = top_p / top_p.sum(-1, keepdim=True) if moe.top_k > 1 else top_p
    cap = moe.capacity(x.shape[0]) or x.shape[0]
    used = [0] * moe.n_experts
    y = torch.zeros_like(x)
    for choice in range(moe.top_k):
        for n in range(x.shape[0]):
            e = int(top_i[n, choice])
            if used[e] < cap:
                used[e] += 1
                y[n] += gates[n, choice] * expert(moe, e, x[n])
    return y


@pytest.mark.parametrize("bias", [False, True])
def test_single_expert_equals_dense_mlp(bias):
    torch.manual_seed(0)
    moe = MoEMLP(8, n_experts=1, top_k=1, capacity_factor=1.0, hidden=32, bias=bias)
    if bias:
        torch.nn.init.normal_(moe.b_fc)
        torch.nn.init.normal_(moe.b_proj)
    dense = torch.nn.Sequential(
        torch.nn.Linear(8, 32, bias=bias), torch.nn.GELU(), torch.nn.Linear(32, 8, bias=bias)
    )
    with torch.no_grad():
        dense[0].weight.copy_(moe.w_fc[0].T)
        dense[2].weight.copy_(moe.w_proj[0].T)
        if bias:
            dense[0].bias.copy_(moe.b_fc[0, 0])
            dense[2].bias.copy_(moe.b_proj[0, 0])
    x = torch.randn(3, 5, 8)
    y, aux = moe(x)
    torch.testing.assert_close(y, dense(x), atol=1e-6, rtol=1e-5)
    assert aux.item() == pytest.approx(1.0)  # one expert: f = P = 1


@pytest.mark.parametrize(("top_k", "cf"), [(1, 0.5), (1, 1.0), (2, 0.6), (2, 1.25), (3, 0.8)])
def test_capacity_dropping_matches_reference(top_k, cf):
    torch.manual_seed(top_k)
    moe = MoEMLP(6, n_experts=4, top_k=top_k, capacity_factor=cf, hidden=12)
    torch.nn.init.normal_(moe.router.weight, 0.0, 1.0)  # uneven routing, so drops happen
    x = torch.randn(40, 6)
    y, _ = moe(x)
    torch.testing.assert_close(y, reference(moe, x), atol=1e-5, rtol=1e-5)
    assert int(moe.last_expert_counts.sum()) == 40 * top_k


def test_drops_exactly_at_capacity():
    moe = MoEMLP(4, n_experts=2, top_k=1, capacity_factor=0.6, hidden=8)
    with torch.no_grad():
        moe.router.weight.zero_()
        moe.router.weight[0, 0] = 10.0  # feature 0 = 1 sends every token to expert 0
    x = torch.randn(10, 4)
    x[:, 0] = 1.0
    assert moe.capacity(10) == math.ceil(0.6 * 10 * 1 / 2) == 3
    y, _ = moe(x)
    gate = torch.softmax(torch.tensor([10.0, 0.0]), 0)[0]
    torch.testing.assert_close(y[:3], gate * expert(moe, 0, x[:3]))
    assert torch.all(y[3:] == 0)
    assert moe.last_expert_counts.tolist() == [10, 0]
    assert moe.last_dropped_fraction.item() == pytest.approx(0.7)


def test_eval_mode_is_dropless_and_batch_independent():
    torch.manual_seed(0)
    moe = MoEMLP(6, n_experts=4, top_k=2, capacity_factor=0.5, hidden=12).eval()
    torch.nn.init.normal_(moe.router.weight, 0.0, 1.0)
    x = torch.randn(30, 6)
    y, _ = moe(x)
    assert moe.last_dropped_fraction.item() == 0.0
    alone = torch.cat([moe(x[n : n + 1])[0] for n in range(30)])
    torch.testing.assert_close(y, alone, atol=1e-5, rtol=1e-5)
    moe.train()
    moe(x)
    assert moe.last_dropped_fraction.item() > 0  # the same batch drops tokens in training


def test_aux_loss_matches_switch_formula_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.7, 0.3]])
    index = torch.tensor([[0], [0], [1], [0]])
    # f = (3/4, 1/4), P = (0.7, 0.3): 2 * (0.75 * 0.7 + 0.25 * 0.3) = 1.2
    assert load_balancing_loss(probs, index).item() == pytest.approx(1.2)
    uniform = torch.full((8, 4), 0.25)
    balanced = torch.tensor([[0, 1], [2, 3], [1, 0], [3, 2], [0, 2], [1, 3], [2, 0], [3, 1]])
    assert load_balancing_loss(uniform, balanced).item() == pytest.approx(1.0)


def test_module_aux_loss_equals_formula_on_its_router():
    torch.manual_seed(0)
    moe = MoEMLP(6, n_experts=4, top_k=2, hidden=12)
    x = torch.randn(20, 6)
    _, aux = moe(x)
    probs = (x @ moe.router.weight.T).softmax(-1)
    torch.testing.assert_close(aux, load_balancing_loss(probs, probs.topk(2, -1).indices))


def test_gradients_reach_router_and_experts():
    torch.manual_seed(0)
    moe = MoEMLP(6, n_experts=4, top_k=2, hidden=12, bias=True)
    y, _ = moe(torch.randn(16, 6))
    y.pow(2).sum().backward()  # task loss only: the router learns through the combine weights
    for name, p in moe.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_config_validation():
    assert MoEConfig().n_experts == 0
    with pytest.raises(ValueError, match="top_k"):
        MoEConfig(n_experts=2, top_k=3)
    with pytest.raises(ValueError, match="capacity_factor"):
        MoEConfig(n_experts=2, capacity_factor=0)
    with pytest.raises(ValueError, match="top_k"):
        MoEMLP(4, n_experts=2, top_k=0)
    assert MoEConfig.from_dict({"n_experts": 4, "capacity_factor": None}).capacity_factor is None
    with pytest.raises(ValueError, match="moe.n_expert: unknown key .did you mean 'n_experts'"):
        MoEConfig.from_dict({"n_expert": 4})
    with pytest.raises(ValueError, match="moe.top_k: expected an integer"):
        MoEConfig.from_dict({"n_experts": 4, "top_k": 1.5})
    with pytest.raises(ValueError, match="moe.aux_loss_coef: expected a number, got None"):
        MoEConfig.from_dict({"aux_loss_coef": None})
