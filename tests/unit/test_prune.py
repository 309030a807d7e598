"""Pruning functions against torch.nn.utils.prune and the Zhu & Gupta formula; structured
removal gives the masked model's outputs; restorers rebuild what a variant saved."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import prune as torch_prune

from bigtrain.compress.prune import (
    cubic_sparsity,
    effective,
    make_permanent,
    masked_names,
    prune_unstructured,
    restore_masks,
    restore_structure,
    sparsity_report,
    total_sparsity,
)
from bigtrain.compress.prune_schedule import PruneSchedule
from bigtrain.compress.prune_structured import (
    find_groups,
    prune_structured,
    remove_pruned_units,
)
from bigtrain.errors import ConfigError
from bigtrain.models import build_model


def mlp(seed=0):
    torch.manual_seed(seed)
    return build_model("mlp", {"hidden": [32, 16]}, (20,), 5).eval()


def cnn(seed=0):
    torch.manual_seed(seed)
    m = build_model("cnn", {"channels": [8, 12], "hidden": [16]}, (1, 8, 8), 4)
    for bn in (m.features[1], m.features[5]):  # non-trivial running statistics
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.2, 0.2)
    return m.eval()


class HeadAttention(nn.Module):
    """bigtrain's attention layout that reads its head size from ``head_dim``."""

    def __init__(self, n_embd=16, n_head=4):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd, bias=True)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.n_head, self.n_embd, self.head_dim = n_head, n_embd, n_embd // n_head

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, self.head_dim).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.head_dim))


class TinyGPT(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.wte = nn.Embedding(11, 16)
        self.attn = HeadAttention()
        self.fc, self.proj, self.head = nn.Linear(16, 32), nn.Linear(32, 16), nn.Linear(16, 11)

    def forward(self, idx):
        x = self.wte(idx)
        x = x + self.attn(x)
        x = x + self.proj(F.gelu(self.fc(x)))
        return self.head(x)


def outputs(model, x):
    with torch.no_grad():
        y = model(x)
    return getattr(y, "logits", y)


@pytest.mark.parametrize("amount", [0.3, 0.5, 0.9])
def test_global_and_layer_sparsity_are_exact_and_match_torch(amount):
    model, ref = mlp(), mlp()
    prune_unstructured(model, amount, "global")
    params = [(m, "weight") for m in ref.modules() if isinstance(m, nn.Linear)]
    torch_prune.global_unstructured(params, torch_prune.L1Unstructured, amount=amount)
    rows = sparsity_report(model)
    n = sum(r[1] for r in rows)
    assert sum(r[2] for r in rows) == round(amount * n)
    assert total_sparsity(rows) == pytest.approx(round(amount * n) / n)
    for (_, a), (_, b) in zip(model.named_modules(), ref.named_modules(), strict=True):
        if isinstance(a, nn.Linear):
            assert torch.equal(a.weight_mask, b.weight_mask)
    model, ref = mlp(), mlp()
    prune_unstructured(model, amount, "layer")
    for (name, p, z, s), m in zip(rows := sparsity_report(model), ref.net[::2], strict=True):
        assert z == round(amount * p) and s == pytest.approx(z / p), name
        torch_prune.l1_unstructured(m, "weight", amount)
    for a, b in zip(model.net[::2], ref.net[::2], strict=True):
        assert torch.equal(a.weight_mask, b.weight_mask)


def test_pruning_again_reaches_the_new_total_and_keeps_old_zeros():
    model = mlp()
    prune_unstructured(model, 0.3)
    old = {n: m.weight_mask.clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    prune_unstructured(model, 0.6)
    rows = sparsity_report(model)
    assert sum(r[2] for r in rows) == round(0.6 * sum(r[1] for r in rows))
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            assert bool((m.weight_mask <= old[name]).all())  # nothing unpruned
    names = masked_names(model)
    make_permanent(model)
    assert masked_names(model) == [] and "net.0.weight" in names
    assert "net.0.weight" in model.state_dict() and total_sparsity(sparsity_report(model)) > 0.59


def test_structured_masks_match_ln_structured_and_bad_input():
    model = cnn()
    ref = copy.deepcopy(model)
    prune_structured(model, 0.25)
    torch_prune.ln_structured(ref.features[0], "weight", 0.25, n=2, dim=0)
    assert torch.equal(model.features[0].weight_mask, ref.features[0].weight_mask)
    with pytest.raises(ConfigError, match="no units"):
        prune_structured(nn.Sequential(nn.Linear(3, 2)), 0.5)
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        prune_unstructured(mlp(), 1.0)


@pytest.mark.parametrize(
    "make,x",
    [
        (cnn, torch.randn(6, 1, 8, 8)),
        (mlp, torch.randn(6, 20)),
        (TinyGPT, torch.randint(0, 11, (3, 7))),
    ],
    ids=["cnn", "mlp", "gpt-heads"],
)
def test_removing_units_keeps_the_masked_outputs_and_restores(make, x):
    model = make()
    prune_structured(model, 0.5)
    masked = outputs(model, x)
    small, step = remove_pruned_units(copy.deepcopy(model))
    assert torch.allclose(outputs(small, x), masked, atol=1e-5)
    n_big = sum(p.numel() for p in make().parameters())
    assert sum(p.numel() for p in small.parameters()) < 0.75 * n_big
    if make is TinyGPT:
        assert small.attn.n_head == 2 and small.attn.c_attn.out_features == 24
    # the restorer rebuilds the same structure from a fresh model; the weights load strictly
    fresh = restore_structure(make(), step)
    fresh.load_state_dict(small.state_dict(), strict=True)
    assert torch.allclose(outputs(fresh, x), masked, atol=1e-5)


def test_real_gpt_heads_and_mlp_neurons_prune_exactly():
    torch.manual_seed(0)
    cfg = {"n_layer": 2, "n_head": 4, "n_embd": 32}
    gpt = build_model("gpt", cfg, (16,), 50).eval()
    groups = find_groups(gpt)
    assert [g.producer for g in groups] == [f"transformer.h.{i}.mlp.c_fc" for i in (0, 1)]
    assert "lm_head" not in [r[0] for r in sparsity_report(gpt)]  # tied to the embedding
    kept = prune_structured(gpt, 0.5)
    assert kept["transformer.h.0.attn"] == 2 and kept["transformer.h.0.mlp.c_fc"] == 64
    x = torch.randint(0, 50, (2, 16))
    masked = outputs(gpt, x)
    small, _ = remove_pruned_units(copy.deepcopy(gpt))
    assert torch.allclose(outputs(small, x), masked, atol=1e-5)
    assert small.transformer.h[0].mlp.c_fc.out_features == 64


def test_restore_masks_matches_what_was_saved():
    model = mlp()
    prune_unstructured(model, 0.5)
    state = model.state_dict()
    fresh = restore_masks(mlp(1), {"masked": masked_names(model)})
    fresh.load_state_dict(state, strict=True)
    x = torch.randn(4, 20)
    assert torch.equal(outputs(fresh, x), outputs(model, x))
    plain = restore_masks(fresh, {"masked": []})  # a permanent variant of a masked recipe
    assert masked_names(plain) == [] and torch.equal(outputs(plain, x), outputs(model, x))


def test_cubic_schedule_formula_and_callback():
    s_i, s_f, t0, end = 0.1, 0.8, 10, 50
    assert cubic_sparsity(5, s_f, t0, end, s_i) == s_i
    assert cubic_sparsity(10, s_f, t0, end, s_i) == pytest.approx(s_i)
    for t in (20, 30, 45):
        expected = s_f + (s_i - s_f) * (1 - (t - t0) / (end - t0)) ** 3
        assert cubic_sparsity(t, s_f, t0, end, s_i) == pytest.approx(expected)
    assert cubic_sparsity(50, s_f, t0, end, s_i) == s_f == cubic_sparsity(99, s_f, t0, end, s_i)
    assert cubic_sparsity(7, 0.5, 7, 7) == 0.5  # one-shot
    model = mlp()
    cb = PruneSchedule(model, s_f, t0, end, every=15, initial=s_i)
    assert [t for t in range(60) if cb.due(t)] == [10, 25, 40, 50]
    cb.apply(25)
    assert total_sparsity(sparsity_report(model)) == pytest.approx(cb.target(25), abs=1e-3)
    cb.apply(50)
    assert total_sparsity(sparsity_report(model)) == pytest.approx(s_f, abs=1e-3)
    assert cb.summary()["sparsity"] == pytest.approx(s_f, abs=1e-3)
    assert effective(model.net[0]).eq(0).any()
