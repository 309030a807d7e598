"""generate(): cached == uncached token for token, seeded sampling, top-k / top-p filters."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bigtrain.models.generate import generate, sample_logits, top_k_filter, top_p_filter
from bigtrain.models.gpt import GPT, GPTConfig, MoEConfig
from bigtrain.models.rnn import RNNLM, RNNLMConfig

V = 37
CONFIGS = {
    "learned": {},
    "rotary": {"position": "rotary"},
    "shared": {"n_layer": 4, "n_unique_blocks": 2},
    "moe": {"moe": MoEConfig(n_experts=4, top_k=2), "position": "rotary"},
}


def lively(model: nn.Module, seed: int = 0) -> nn.Module:
    """Large random weights, so an untrained model's greedy output is not one repeated token."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0.0, 0.5)
    return model


def gpt(block: int = 16, **kw) -> GPT:
    kw = {"n_layer": 2, "n_head": 2, "n_embd": 16, **kw}
    return lively(GPT.from_config(GPTConfig(**kw), (block,), V))


def manual_greedy(model: nn.Module, idx: torch.Tensor, n: int, window: int) -> torch.Tensor:
    """nanoGPT's generate loop with temperature 0: crop, full forward, argmax, append."""
    model.eval()
    with torch.no_grad():
        for _ in range(n):
            logits = model(idx[:, -window:]).logits
            idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


@pytest.mark.parametrize("name", list(CONFIGS))
def test_cached_greedy_equals_uncached_and_nanogpt_loop(name):
    model = gpt(**CONFIGS[name]).eval()
    prompt = torch.randint(0, V, (3, 5))
    cached = generate(model, prompt, 30, temperature=0)  # crosses block_size=16
    assert cached.shape == (3, 35) and torch.equal(cached[:, :5], prompt)
    assert torch.equal(cached, generate(model, prompt, 30, temperature=0, use_cache=False))
    assert torch.equal(cached, manual_greedy(model, prompt, 30, window=16))
    assert len(set(cached[:, 5:].flatten().tolist())) > 3  # a discriminating sequence


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("filters", [{}, {"top_k": 5}, {"top_p": 0.9, "temperature": 0.8}])
def test_cached_sampling_equals_uncached_with_the_same_seed(name, filters):
    model = gpt(**CONFIGS[name])
    prompt = torch.randint(0, V, (2, 3))
    runs = [
        generate(
            model, prompt, 20, generator=torch.Generator().manual_seed(7), use_cache=c, **filters
        )
        for c in (True, False)
    ]
    assert torch.equal(runs[0], runs[1])
    other = generate(model, prompt, 20, generator=torch.Generator().manual_seed(8), **filters)
    assert not torch.equal(runs[0], other)


def test_prompt_longer_than_block_size_is_cropped():
    model = gpt(block=8).eval()
    prompt = torch.randint(0, V, (2, 12))
    out = generate(model, prompt, 6, temperature=0)
    assert torch.equal(out, manual_greedy(model, prompt, 6, window=8))


def test_generate_restores_training_mode_and_validates():
    model = gpt(dropout=0.5).train()
    prompt = torch.randint(0, V, (1, 4))
    a = generate(model, prompt, 8, temperature=0)
    assert model.training
    assert torch.equal(a, generate(model, prompt, 8, temperature=0))  # dropout was off
    assert torch.equal(generate(model, prompt, 0), prompt)
    for bad in ({"temperature": -1}, {"top_k": 0}, {"top_p": 0.0}, {"top_p": 1.5}):
        with pytest.raises(ValueError):
            generate(model, prompt, 2, **bad)
    with pytest.raises(ValueError, match="prompt"):
        generate(model, prompt[:, :0], 2)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_rnnlm_stateful_generation_equals_full_reruns(cell):
    model = lively(RNNLM.from_config(RNNLMConfig(cell=cell, n_embd=8, hidden=16), (8,), V))
    prompt = torch.randint(0, V, (2, 4))
    for kw in ({"temperature": 0}, {"generator": torch.Generator().manual_seed(3), "top_k": 9}):
        stateful = generate(model, prompt, 20, **kw)
        if "generator" in kw:
            kw["generator"] = torch.Generator().manual_seed(3)
        assert torch.equal(stateful, generate(model, prompt, 20, use_cache=False, **kw))
    assert torch.equal(
        generate(model, prompt, 20, temperature=0), manual_greedy(model, prompt, 20, 99)
    )


def test_other_models_use_the_plain_loop():
    class Bigram(nn.Module):
        def __init__(self):
            super().__init__()
            self.table = nn.Embedding(V, V)

        def forward(self, idx):
            return self.table(idx)

    model = lively(Bigram())
    prompt = torch.randint(0, V, (2, 2))
    out = generate(model, prompt, 5, temperature=0)
    for t in range(2, 7):
        assert torch.equal(out[:, t], model.table.weight[out[:, t - 1]].argmax(-1))


def test_top_k_and_top_p_filters_by_hand():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    assert torch.isinf(top_k_filter(logits, 2)).tolist() == [[False, True, False, True]]
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    # sorted 0.5, 0.3, 0.15, 0.05; mass before each: 0, 0.5, 0.8, 0.95
    keep = lambda p: torch.isfinite(top_p_filter(probs.log(), p)).tolist()  # noqa: E731
    assert keep(0.8) == [[False, True, False, True]]
    assert keep(0.81) == [[True, True, False, True]]
    assert keep(0.1) == [[False, True, False, False]]
    assert keep(1.0) == [[True, True, True, True]]


def test_sampling_respects_filters_and_seed():
    logits = torch.log(torch.tensor([0.15, 0.5, 0.05, 0.3])).expand(4000, 4)
    draws = sample_logits(logits, top_p=0.8, generator=torch.Generator().manual_seed(0))
    assert set(draws.tolist()) == {1, 3}
    assert 0.55 < (draws == 1).float().mean().item() < 0.70  # 0.5 / 0.8 = 0.625
    again = sample_logits(logits, top_p=0.8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(draws, again)
    assert torch.equal(sample_logits(logits[:3], temperature=0), torch.tensor([1, 1, 1]))
    greedyish = sample_logits(logits, top_k=1, generator=torch.Generator().manual_seed(0))
    assert set(greedyish.tolist()) == {1}
