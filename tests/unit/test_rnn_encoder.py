"""RNNLM, RNNClassifier and EncoderClassifier: shapes, stateful path, padding invariance."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bigtrain.models.encoder import EncoderClassifier, EncoderClassifierConfig
from bigtrain.models.rnn import RNNLM, RNNClassifier, RNNClassifierConfig, RNNLMConfig

V = 23


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_rnnlm_shapes_loss_and_stateful_path(cell):
    torch.manual_seed(0)
    model = RNNLM.from_config(RNNLMConfig(cell=cell, n_embd=8, hidden=12), (16,), V).eval()
    assert model.config.block_size == 16 and model.config.vocab_size == V
    idx, targets = torch.randint(0, V, (3, 10)), torch.randint(0, V, (3, 10))
    logits, loss = model(idx, targets)[:2]
    assert logits.shape == (3, 10, V)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1)))
    # feeding the sequence in pieces while carrying the state gives the same logits
    a, state = model.step(idx[:, :4])
    b, state = model.step(idx[:, 4:7], state)
    c, _ = model.step(idx[:, 7:], state)
    torch.testing.assert_close(torch.cat([a, b, c], 1), logits, atol=1e-6, rtol=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_rnnlm_weight_tying():
    model = RNNLM.from_config({"n_embd": 8, "hidden": 8, "tie_weights": True}, (8,), V)
    assert model.head.weight is model.wte.weight
    assert sum(p.numel() for p in model.parameters()) == (
        V * 8 + V + 2 * 4 * (8 * 8 + 8 * 8 + 2 * 8)  # embedding/head + head bias + 2 LSTM layers
    )
    with pytest.raises(ValueError, match="hidden == n_embd"):
        RNNLMConfig(n_embd=8, hidden=16, tie_weights=True)
    with pytest.raises(ValueError, match="cell"):
        RNNLMConfig(cell="transformer")


def _pad(idx: torch.Tensor, n: int, pad_id: int = 0) -> torch.Tensor:
    return torch.cat([idx, torch.full((idx.shape[0], n), pad_id)], dim=1)


@pytest.mark.parametrize(
    "kw",
    [
        {"pooling": "last"},
        {"pooling": "mean"},
        {"pooling": "last", "bidirectional": True, "cell": "gru", "n_layers": 2},
        {"pooling": "mean", "bidirectional": True},
    ],
)
def test_rnn_classifier_shapes_and_padding_invariance(kw):
    torch.manual_seed(0)
    cfg = RNNClassifierConfig(n_embd=8, hidden=12, vocab_size=V, **kw)
    model = RNNClassifier.from_config(cfg, (16,), 5).eval()
    idx = torch.randint(1, V, (4, 9))
    idx[1, 6:] = 0  # a shorter sequence in the batch
    logits = model(idx)
    assert logits.shape == (4, 5)
    torch.testing.assert_close(model(_pad(idx, 5)), logits, atol=1e-6, rtol=1e-5)
    # the right-padded row equals that sequence on its own, unpadded
    torch.testing.assert_close(model(idx[1:2, :6]), logits[1:2], atol=1e-6, rtol=1e-5)


def test_rnn_classifier_needs_vocab_size():
    with pytest.raises(ValueError, match="vocab_size"):
        RNNClassifier.from_config(RNNClassifierConfig(), (8,), 2)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_encoder_shapes_and_padding_invariance(pooling):
    torch.manual_seed(0)
    cfg = EncoderClassifierConfig(n_layer=2, n_head=2, n_embd=16, vocab_size=V, pooling=pooling)
    model = EncoderClassifier.from_config(cfg, (20,), 3).eval()
    assert model.config.block_size == 20
    idx = torch.randint(1, V, (4, 8))
    idx[2, 5:] = 0
    logits = model(idx)
    assert logits.shape == (4, 3)
    torch.testing.assert_close(model(_pad(idx, 6)), logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(model(idx[2:3, :5]), logits[2:3], atol=1e-5, rtol=1e-5)
    # real tokens do matter (the invariance above is not trivial), in any position
    changed = idx.clone()
    changed[:, 4] = (changed[:, 4] % (V - 1)) + 1
    assert not torch.allclose(model(changed), logits)


def test_encoder_attention_is_bidirectional_and_all_pad_rows_are_finite():
    torch.manual_seed(0)
    cfg = EncoderClassifierConfig(n_layer=1, n_head=2, n_embd=16, vocab_size=V, dropout=0.0)
    model = EncoderClassifier.from_config(cfg, (8,), 2)
    captured = {}
    model.blocks[0].register_forward_hook(lambda m, a, out: captured.update(out=out))
    model.wte.weight.requires_grad_(True)
    idx = torch.randint(1, V, (1, 6))
    model(idx)
    grad_in = torch.autograd.grad(captured["out"][0, 0].sum(), model.wte.weight)[0]
    assert torch.all(grad_in[idx[0, 1:]].abs().sum(-1) > 0)  # position 0 sees later tokens
    assert torch.isfinite(model(torch.zeros(2, 5, dtype=torch.long))).all()


def test_encoder_validation():
    with pytest.raises(ValueError, match="vocab_size: must be set"):
        EncoderClassifier.from_config(EncoderClassifierConfig(), (8,), 2)
    model = EncoderClassifier.from_config({"vocab_size": V, "n_embd": 8, "n_head": 2}, (8,), 2)
    with pytest.raises(ValueError, match="block_size=8"):
        model(torch.ones(1, 9, dtype=torch.long))
    with pytest.raises(ValueError, match="pooling"):
        EncoderClassifierConfig(pooling="max")
