"""GPT: attention against a naive oracle, causality, RoPE, KV cache, parameter counts, training."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bigtrain.models.gpt import GPT, GPTConfig, MoEConfig

V = 37


def make(seed: int = 0, block: int = 16, **kw) -> GPT:
    torch.manual_seed(seed)
    kw = {"n_layer": 2, "n_head": 2, "n_embd": 16, **kw}
    return GPT.from_config(GPTConfig(**kw), (block,), V)


CONFIGS = {
    "learned": {},
    "rotary": {"position": "rotary"},
    "shared": {"n_layer": 4, "n_unique_blocks": 2, "position": "rotary"},
    "moe": {"moe": MoEConfig(n_experts=4, top_k=2)},
    "untied_bias": {"tie_weights": False, "bias": True},
}


def naive_attention(attn, x, rope=None):
    """Explicit masked-softmax attention; RoPE as 2-D rotations of the pairs (i, i + hd/2)."""
    B, T, C = x.shape
    nh, hd = attn.n_head, C // attn.n_head
    qkv = x @ attn.c_attn.weight.T
    if attn.c_attn.bias is not None:
        qkv = qkv + attn.c_attn.bias
    q, k, v = (t.reshape(B, T, nh, hd).permute(0, 2, 1, 3) for t in qkv.split(C, dim=-1))
    if rope is not None:

        def rot(t):
            out = t.clone()
            for pos in range(T):
                for i in range(hd // 2):
                    theta = pos * rope ** (-2 * i / hd)
                    a, b = t[..., pos, i], t[..., pos, i + hd // 2]
                    out[..., pos, i] = a * math.cos(theta) - b * math.sin(theta)
                    out[..., pos, i + hd // 2] = a * math.sin(theta) + b * math.cos(theta)
            return out

        q, k = rot(q), rot(k)
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    y = (scores.softmax(-1) @ v).permute(0, 2, 1, 3).reshape(B, T, C)
    y = y @ attn.c_proj.weight.T
    return y if attn.c_proj.bias is None else y + attn.c_proj.bias


@pytest.mark.parametrize("position", ["learned", "rotary"])
def test_attention_matches_naive_masked_softmax(position):
    model = make(position=position, bias=True, n_embd=16, n_head=2)
    attn = model.transformer.h[0].attn
    x = torch.randn(2, 7, 16)
    cos = sin = None
    if position == "rotary":
        cos, sin = model.rope_cos[:7], model.rope_sin[:7]
    got = attn(x, cos, sin)
    want = naive_attention(attn, x, rope=10000.0 if position == "rotary" else None)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_rope_scores_depend_only_on_relative_position():
    model = make(position="rotary", block=32)
    from bigtrain.models.gpt import apply_rotary

    q, k = torch.randn(8), torch.randn(8)
    cos, sin = model.rope_cos, model.rope_sin

    def score(m, n):
        return apply_rotary(q, cos[m], sin[m]) @ apply_rotary(k, cos[n], sin[n])

    torch.testing.assert_close(score(5, 2), score(20, 17), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(score(5, 2), score(5, 3))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_no_information_flows_from_future_tokens(name):
    model = make(**CONFIGS[name]).eval()
    captured = {}

    def grab(module, args):
        args[0].retain_grad()
        captured["x"] = args[0]

    model.transformer.h[0].register_forward_pre_hook(grab)
    idx = torch.randint(0, V, (2, 10))
    logits = model(idx).logits
    logits[:, 4].sum().backward()
    grad = captured["x"].grad  # (B, T, C)
    assert torch.all(grad[:, 5:] == 0)
    assert torch.all(grad[:, :5].abs().sum(-1) > 0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_kv_cache_logits_equal_full_forward(name):
    model = make(**CONFIGS[name]).eval()
    idx = torch.randint(0, V, (3, 12))
    full = model(idx).logits
    cache = model.make_kv_cache(3)
    with torch.no_grad():
        parts = [model(idx[:, :5], kv_cache=cache)[0]]  # prefill
        parts.append(model(idx[:, 5:6], kv_cache=cache)[0])  # one-token decode
        parts.append(model(idx[:, 6:9], kv_cache=cache)[0])  # chunk after a prefix
        parts += [model(idx[:, t : t + 1], kv_cache=cache)[0] for t in range(9, 12)]
    assert cache.pos == 12
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=1e-5)


def test_context_longer_than_block_size_raises():
    model = make(block=8)
    with pytest.raises(ValueError, match="block_size=8"):
        model(torch.zeros(1, 9, dtype=torch.long))
    cache = model.make_kv_cache(1, max_len=4)
    model(torch.zeros(1, 4, dtype=torch.long), kv_cache=cache)
    with pytest.raises(ValueError, match="KV cache"):
        model(torch.zeros(1, 1, dtype=torch.long), kv_cache=cache)


def test_gpt2_small_parameter_count_matches_nanogpt():
    cfg = GPTConfig(n_layer=12, n_head=12, n_embd=768, bias=True)
    with torch.device("meta"):
        model = GPT.from_config(cfg, (1024,), 50257)
    assert model.num_parameters() == 124_439_808  # GPT-2 small (124M)
    assert model.num_parameters(exclude_embeddings=True) == 123_653_376  # nanoGPT's "123.65M"


def test_parameter_counts_equal_hand_formulas():
    L, C, T, E = 4, 16, 16, 4
    per_block = 12 * C * C + 2 * C  # qkv + proj + 2 MLP mats (4C) + two LayerNorm weights
    tied = make(n_layer=L, block=T)
    assert tied.lm_head.weight is tied.transformer.wte.weight
    assert tied.num_parameters() == V * C + T * C + L * per_block + C
    untied = make(n_layer=L, block=T, tie_weights=False)
    assert untied.num_parameters() == 2 * V * C + T * C + L * per_block + C
    assert untied.num_parameters(exclude_embeddings=True) == V * C + L * per_block + C
    shared = make(n_layer=L, block=T, n_unique_blocks=1)
    assert tied.num_parameters() - shared.num_parameters() == (L - 1) * per_block
    assert [b is shared.transformer.h[0] for b in shared.layers] == [True] * L
    rotary = make(n_layer=L, block=T, position="rotary")
    assert rotary.num_parameters() == V * C + L * per_block + C
    moe = make(n_layer=L, block=T, moe=MoEConfig(n_experts=E, every_n_layers=2))
    extra = C * E + (E - 1) * 8 * C * C  # router + the extra experts, in layers 1 and 3
    assert moe.num_parameters() == tied.num_parameters() + 2 * extra
    assert [b.is_moe for b in moe.transformer.h] == [False, True, False, True]


def test_shared_block_layer_mapping():
    model = make(n_layer=6, n_unique_blocks=3)
    h = model.transformer.h
    assert [next(j for j in range(3) if b is h[j]) for b in model.layers] == [0, 0, 1, 1, 2, 2]


def test_flops_per_token_formula():
    dense = make(n_layer=3, block=16)
    n = dense.num_parameters(exclude_embeddings=True)
    assert dense.flops_per_token() == 6 * n + 12 * 3 * 16 * 16
    # a block shared by all 3 layers does the same work as 3 distinct ones
    assert make(n_layer=3, block=16, n_unique_blocks=1).flops_per_token() == dense.flops_per_token()
    # MoE with top_k=1 of 4 experts: one expert per token, plus the router
    moe = make(n_layer=3, block=16, moe=MoEConfig(n_experts=4, top_k=1))
    assert moe.flops_per_token() == dense.flops_per_token() + 6 * 3 * 16 * 4


def test_init_follows_nanogpt():
    model = make(n_layer=8, n_embd=64, n_head=4, block=64)
    h = model.transformer.h[0]
    assert abs(h.attn.c_attn.weight.std().item() - 0.02) < 0.002
    assert abs(h.mlp.c_proj.weight.std().item() - 0.02 / math.sqrt(16)) < 0.0005
    assert torch.all(h.ln_1.weight == 1)


def test_loss_ignores_minus_one_and_adds_scaled_moe_aux_loss():
    model = make()
    idx, targets = torch.randint(0, V, (2, 8)), torch.randint(0, V, (2, 8))
    targets[0, :3] = -1
    out = model(idx, targets)
    keep = targets != -1
    torch.testing.assert_close(out.loss, F.cross_entropy(out.logits[keep], targets[keep]))
    assert out.cross_entropy is out.loss and out.aux_loss is None and out.expert_counts is None

    moe = make(moe=MoEConfig(n_experts=4, aux_loss_coef=0.5))
    out = moe(idx, targets)
    ce = F.cross_entropy(out.logits[keep], targets[keep])
    torch.testing.assert_close(out.cross_entropy, ce)
    torch.testing.assert_close(out.loss, ce + 0.5 * out.aux_loss)
    out.loss.backward()
    assert moe.transformer.h[0].mlp.router.weight.grad.abs().sum() > 0
    assert out.expert_counts.shape == (4,)
    assert int(out.expert_counts.sum()) == 2 * 16 * 2  # layers * tokens * top_k


@pytest.mark.parametrize("name", ["learned", "shared", "moe"])
def test_activation_checkpointing_gives_identical_loss_and_grads(name):
    kw = {**CONFIGS[name], "dropout": 0.1}
    plain, ckpt = make(**kw), make(**kw, activation_checkpointing=True)
    idx, targets = torch.randint(0, V, (2, 12)), torch.randint(0, V, (2, 12))
    losses = []
    for model in (plain, ckpt):
        torch.manual_seed(1)  # same dropout masks
        loss = model(idx, targets).loss
        loss.backward()
        losses.append(loss)
    assert torch.equal(losses[0], losses[1])
    for (name_a, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, atol=1e-6, rtol=1e-5, msg=name_a)


def test_tiny_gpt_overfits_a_fixed_batch():
    model = make(n_layer=2, n_head=2, n_embd=32, block=64)
    torch.manual_seed(0)
    data = torch.randint(0, V, (2, 65))
    x, y = data[:, :-1], data[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    for _ in range(120):
        loss = model(x, y).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1


def test_from_config_and_validation():
    model = GPT.from_config({"n_layer": 1, "n_head": 2, "n_embd": 8, "vocab_size": 64}, (32,), 50)
    assert model.config.block_size == 32 and model.lm_head.out_features == 64
    assert model.state_dict().keys() == GPT(model.config).state_dict().keys()
    assert "rope_cos" not in make(position="rotary").state_dict()
    with pytest.raises(ValueError, match="smaller than the data"):
        GPT.from_config(GPTConfig(vocab_size=10), (8,), 50)
    with pytest.raises(ValueError, match="vocab_size: not set"):
        GPT(GPTConfig())
    with pytest.raises(ValueError, match="divisible by n_head"):
        GPTConfig(n_embd=10, n_head=4)
    with pytest.raises(ValueError, match="position"):
        GPTConfig(position="alibi")
    with pytest.raises(ValueError, match="n_unique_blocks"):
        GPTConfig(n_layer=2, n_unique_blocks=3)
    with pytest.raises(ValueError, match="top_k"):
        GPTConfig(moe={"n_experts": 2, "top_k": 3})


class _NanoBlock(torch.nn.Module):
    """nanoGPT's Block, written out: same module order, so the same seeded init."""

    def __init__(self, C, bias):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(C, bias=bias)
        self.attn = torch.nn.Module()
        self.attn.c_attn = torch.nn.Linear(C, 3 * C, bias=bias)
        self.attn.c_proj = torch.nn.Linear(C, C, bias=bias)
        self.ln_2 = torch.nn.LayerNorm(C, bias=bias)
        self.mlp = torch.nn.Module()
        self.mlp.c_fc = torch.nn.Linear(C, 4 * C, bias=bias)
        self.mlp.c_proj = torch.nn.Linear(4 * C, C, bias=bias)

    def forward(self, x, nh, p):
        B, T, C = x.shape
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, nh, C // nh).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        y = self.attn.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        x = x + F.dropout(y, p)
        return x + F.dropout(self.mlp.c_proj(F.gelu(self.mlp.c_fc(self.ln_2(x)))), p)


@pytest.mark.parametrize("bias", [False, True])
def test_init_and_training_steps_bitwise_equal_to_nanogpt(bias):
    L, nh, C, T, p = 2, 2, 32, 64, 0.1
    torch.manual_seed(0)
    ref = torch.nn.Module()
    ref.transformer = torch.nn.ModuleDict(
        {"wte": torch.nn.Embedding(V, C), "wpe": torch.nn.Embedding(T, C),
         "h": torch.nn.ModuleList(_NanoBlock(C, bias) for _ in range(L)),
         "ln_f": torch.nn.LayerNorm(C, bias=bias)}
    )  # fmt: skip
    ref.lm_head = torch.nn.Linear(C, V, bias=False)
    ref.transformer.wte.weight = ref.lm_head.weight
    for m in ref.modules():  # nanoGPT's _init_weights, then the scaled residual projections
        if isinstance(m, torch.nn.Linear | torch.nn.Embedding):
            torch.nn.init.normal_(m.weight, 0.0, 0.02)
            if getattr(m, "bias", None) is not None:
                torch.nn.init.zeros_(m.bias)
    for name, w in ref.named_parameters():
        if name.endswith("c_proj.weight"):
            torch.nn.init.normal_(w, 0.0, 0.02 / math.sqrt(2 * L))
    mine = make(seed=0, block=T, n_layer=L, n_head=nh, n_embd=C, dropout=p, bias=bias)
    assert [n for n, _ in ref.named_parameters()] == [n for n, _ in mine.named_parameters()]
    assert all(torch.equal(a, b) for a, b in zip(ref.parameters(), mine.parameters()))

    def ref_loss(x, y):
        t = ref.transformer
        h = F.dropout(t.wte(x) + t.wpe(torch.arange(x.shape[1])), p)
        for block in t.h:
            h = block(h, nh, p)
        logits = ref.lm_head(t.ln_f(h))
        return F.cross_entropy(logits.view(-1, V), y.reshape(-1), ignore_index=-1)

    data = torch.randint(0, V, (4, T + 1))
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (ref, mine)]
    for step in range(3):
        losses = []
        for fn, opt in zip((ref_loss, lambda a, b: mine(a, b)[1]), opts):
            torch.manual_seed(step)  # same dropout masks
            loss = fn(x, y)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss)
        assert torch.equal(losses[0], losses[1])
