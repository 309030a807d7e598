"""GPT architecture switches (model.norm, model.mlp, model.qk_norm, model.logit_softcap,
model.zero_init_proj), each against a direct computation of what it should do."""

import math

import pytest
import torch
import torch.nn.functional as F

from bigtrain.models.gpt import GPT, GPTConfig


def _gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(n_layer=2, n_head=2, n_embd=16, block_size=8, vocab_size=11, **kw))


def _idx():
    return torch.randint(0, 11, (3, 8), generator=torch.Generator().manual_seed(1))


def test_rmsnorm_is_the_published_formula():
    model = _gpt(norm="rmsnorm")
    norm = model.transformer.h[0].ln_1
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(4, 16)
    want = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight
    assert torch.allclose(norm(x), want, atol=1e-6)
    assert not any(isinstance(m, torch.nn.LayerNorm) for m in model.modules())


@pytest.mark.parametrize("kind", ["relu2", "swiglu"])
def test_mlp_variants(kind):
    model = _gpt(mlp=kind)
    mlp = model.transformer.h[0].mlp
    x = torch.randn(2, 5, 16)
    h = mlp.c_fc(x)
    if kind == "relu2":
        want = mlp.c_proj(torch.relu(h) ** 2)
        assert mlp.c_fc.out_features == 64
    else:
        a, b = h[..., :64], h[..., 64:]
        want = mlp.c_proj(a * torch.sigmoid(a) * b)
        assert mlp.c_fc.out_features == 128  # both halves of the gate
    assert torch.allclose(mlp(x), want, atol=1e-6)


def test_qk_norm_normalises_queries_and_keys_per_head():
    model = _gpt(qk_norm=True)
    attn = model.transformer.h[0].attn
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 1.5)
        attn.k_norm.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 8, 16)
    q, k, v = attn.c_attn(x).split(16, dim=2)
    heads = [t.view(2, 8, 2, 8).transpose(1, 2) for t in (q, k, v)]

    def rms(t, w):
        return t / torch.sqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * w

    q, k, v = rms(heads[0], attn.q_norm.weight), rms(heads[1], attn.k_norm.weight), heads[2]
    scores = q @ k.transpose(-1, -2) / math.sqrt(8)
    scores = scores.masked_fill(torch.ones(8, 8).triu(1).bool(), float("-inf"))
    y = (scores.softmax(-1) @ v).transpose(1, 2).reshape(2, 8, 16)
    assert torch.allclose(attn(x), attn.c_proj(y), atol=1e-5)


def test_logit_softcap_squashes_the_logits_of_the_same_weights():
    plain, capped = _gpt(), _gpt(logit_softcap=2.0)
    capped.load_state_dict(plain.state_dict())
    raw = plain(_idx()).logits
    out = capped(_idx()).logits
    assert torch.allclose(out, 2.0 * torch.tanh(raw / 2.0), atol=1e-6)
    assert out.abs().max() < 2.0
    loss = capped(_idx(), _idx()).loss
    assert torch.allclose(loss, F.cross_entropy(out.reshape(-1, 11), _idx().reshape(-1)))


def test_zero_init_projections_make_every_block_the_identity_at_start():
    model = _gpt(zero_init_proj=True)
    idx = _idx()
    t = model.transformer
    x = t.wte(idx) + t.wpe.weight[:8]
    for block in t.h:
        assert torch.equal(block(x)[0], x)
        assert torch.count_nonzero(block.attn.c_proj.weight) == 0
    assert torch.allclose(model(idx).logits, model.lm_head(t.ln_f(x)))


@pytest.mark.parametrize("bad", [{"norm": "batchnorm"}, {"mlp": "tanh"}, {"logit_softcap": 0}])
def test_unknown_switch_values_are_refused(bad):
    with pytest.raises(ValueError):
        GPTConfig(**bad)


def test_every_switch_trains_and_generates():
    model = _gpt(norm="rmsnorm", mlp="swiglu", qk_norm=True, logit_softcap=15.0, position="rotary")
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    idx = _idx()
    first = None
    for _ in range(20):
        loss = model(idx, idx).loss
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first
    cache = model.make_kv_cache(3)
    with torch.no_grad():
        full = model(idx).logits[:, -1]
        model(idx[:, :-1], kv_cache=cache)
        step = model(idx[:, -1:], kv_cache=cache).logits[:, -1]
    assert torch.allclose(full, step, atol=1e-4)
