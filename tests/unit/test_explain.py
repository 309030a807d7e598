"""Attributions (bigtrain.explain): completeness, sanity checks and oracles, outputs, report."""

from __future__ import annotations

import json
import re
import sys

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("captum", reason="pip install 'bigtrain[explain]'")

from bigtrain import explain  # noqa: E402
from bigtrain.errors import ConfigError  # noqa: E402


def mlp(d_in: int = 6, d_out: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, 16), nn.Tanh(), nn.Linear(16, d_out))


class TokenModel(nn.Module):
    """Embedding -> masked mean -> tanh -> Linear; ``pad`` is masked out like the encoder's."""

    def __init__(self, vocab: int = 11, pad: int = 10) -> None:
        super().__init__()
        self.wte, self.head, self.pad = nn.Embedding(vocab, 8), nn.Linear(8, 3), pad

    def from_embeddings(self, e: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        m = (ids != self.pad).float()[..., None]
        return self.head(torch.tanh((e * m).sum(1) / m.sum(1).clamp(min=1)))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.from_embeddings(self.wte(ids), ids)


def token_batch() -> torch.Tensor:
    ids = torch.randint(0, 10, (3, 9))
    ids[:, 6:] = 10  # right padding
    return ids


def test_ig_completeness_on_an_mlp():
    """Sum of IG attributions = f(x) - f(baseline) (Gauss-Legendre, 64 steps: within 1e-4)."""
    model, x, base = mlp(), torch.randn(5, 6), torch.randn(6)
    a = explain.attribute(model, x, "ig", target=2, baseline=base)
    with torch.no_grad():
        change = model(x)[:, 2] - model(base[None])[0, 2]
    assert torch.allclose(a.values.sum(1), change, atol=1e-4)
    assert a.gap.abs().max() < 1e-4 and a.values.shape == x.shape


def test_ig_on_token_ids_is_completeness_on_the_embeddings_and_equals_captums_layer_ig():
    from captum.attr import LayerIntegratedGradients

    torch.manual_seed(0)
    model, ids = TokenModel(), token_batch()
    a = explain.attribute(model, ids, "ig", target=1, baseline=10)
    assert a.values.shape == ids.shape
    with torch.no_grad():  # the path starts at the pad embedding under the input's own mask
        ref = model.from_embeddings(model.wte(torch.full_like(ids, 10)), ids)[:, 1]
        change = model(ids)[:, 1] - ref
    assert torch.allclose(a.values.sum(1), change, atol=1e-5)
    assert (a.values[:, 6:] == 0).all()  # padding is masked: no attribution
    lig = LayerIntegratedGradients(model, model.wte)
    oracle = lig.attribute(ids, baselines=torch.full_like(ids, 10), target=1, n_steps=64)
    assert torch.allclose(a.values, oracle.sum(-1), atol=1e-5)


def test_model_randomisation_changes_the_attributions():
    """Adebayo et al.'s sanity check: re-initialising the trained weights changes IG a lot."""
    torch.manual_seed(0)
    x = torch.randn(256, 6)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()  # only features 0 and 1 matter
    model = mlp(d_out=2)
    for _ in range(150):  # plain full-batch gradient descent (no optimizer start-up cost)
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.5 * p.grad
    probe = x[:32]
    trained = explain.attribute(model, probe, "ig", target=1)
    imp = explain.global_importance(trained.values)
    assert imp[:2].sum() / imp.sum() > 0.85  # the informative features dominate
    torch.manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.Linear):
            m.reset_parameters()
    random = explain.attribute(model, probe, "ig", target=1)
    rand_imp = explain.global_importance(random.values)
    assert rand_imp[:2].sum() / rand_imp.sum() < 0.5  # near uniform (2/6)
    assert explain.compare_importance(imp, rand_imp)["spearman"] < 0.5


def test_kernel_shap_on_a_linear_model_recovers_coefficients_times_x_minus_baseline():
    torch.manual_seed(0)
    lin, x, base = nn.Linear(6, 2), torch.randn(3, 6), torch.randn(6)
    expected = lin.weight[1].detach() * (x - base)
    a = explain.attribute(lin, x, "kernel_shap", target=1, baseline=base, n_samples=100)
    assert torch.allclose(a.values, expected, atol=1e-4)
    lime = explain.attribute(lin, x, "lime", target=1, baseline=base, n_samples=100)
    assert torch.allclose(lime.values, expected, atol=0.02)  # ridge surrogate, not all zeros


def test_perturbation_methods_on_ids_leave_padding_at_exactly_zero():
    torch.manual_seed(0)
    model, ids = TokenModel(), token_batch()
    for method in ("occlusion", "kernel_shap", "lime"):
        a = explain.attribute(model, ids, method, baseline=10, n_samples=80)
        assert (a.values[:, 6:] == 0).all() and a.values[:, :6].abs().sum() > 0, method
    ks = explain.attribute(model, ids, "kernel_shap", baseline=10, n_samples=80)
    with torch.no_grad():  # the reference is the all-pad passage
        out, ref = model(ids), model(torch.full_like(ids, 10))
    change = out[torch.arange(3), ks.targets] - ref[0, ks.targets]
    assert torch.allclose(ks.values.sum(1), change, atol=1e-4)


def test_superpixel_kernel_shap_shares_a_patch_value_among_its_pixels():
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 4))
    x = torch.randn(2, 1, 8, 8)
    mask = explain.patch_mask((1, 8, 8), 2)
    assert mask.shape == (1, 8, 8) and int(mask.max()) == 15 and (mask[0, :2, :2] == 0).all()
    a = explain.attribute(cnn, x, "kernel_shap", feature_mask=mask, n_samples=120)
    blocks = a.values[:, 0].reshape(2, 4, 2, 4, 2)
    assert torch.allclose(blocks, blocks[:, :, :1, :, :1].expand_as(blocks))
    assert a.gap.abs().max() < 1e-3  # values add up to f(x) - f(baseline)


def test_binary_scores_explain_class_zero_as_minus_the_logit():
    torch.manual_seed(0)
    lin, x = nn.Linear(4, 1), torch.randn(3, 4)
    scores = explain.Scores(lin, two_sided=True)
    assert scores(x).shape == (3, 2)
    one = explain.attribute(scores, x, "ig", target=1)
    zero = explain.attribute(scores, x, "ig", target=0)
    assert torch.allclose(one.values, -zero.values, atol=1e-6)
    assert torch.allclose(one.values, lin.weight[0].detach() * x, atol=1e-5)
    default = explain.attribute(scores, x, "saliency")
    assert torch.equal(default.targets, (lin(x)[:, 0] > 0).long())  # the predicted class


@pytest.mark.parametrize("method", ["gradient_shap", "saliency", "occlusion"])
def test_other_methods_run_on_tables_and_token_ids(method):
    a = explain.attribute(mlp(), torch.randn(3, 6), method)
    assert a.values.shape == (3, 6) and torch.isfinite(a.values).all()
    t = explain.attribute(TokenModel(), token_batch(), method, baseline=10)
    assert t.values.shape == (3, 9) and (t.values[:, 6:] == 0).all()


def test_bad_requests_are_one_line_config_errors(monkeypatch):
    with pytest.raises(ConfigError, match="unknown attribution method 'intgrad'"):
        explain.attribute(mlp(), torch.randn(2, 6), "intgrad")
    with pytest.raises(ConfigError, match=r"target 3 is out of range.*\(0\.\.2\)"):
        explain.attribute(mlp(), torch.randn(2, 6), "ig", target=3)

    class OneHot(nn.Module):  # reads ids but has no nn.Embedding to differentiate
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(11, 3)

        def forward(self, ids):
            return self.lin(nn.functional.one_hot(ids, 11).float().mean(1))

    with pytest.raises(ConfigError) as err:
        explain.attribute(OneHot(), token_batch(), "ig", baseline=10)
    msg = str(err.value)
    assert "differentiable" in msg and "occlusion, kernel_shap, lime" in msg and "\n" not in msg
    assert explain.attribute(OneHot(), token_batch(), "occlusion", baseline=10).values.shape
    monkeypatch.setitem(sys.modules, "captum.attr", None)
    monkeypatch.setitem(sys.modules, "captum", None)
    with pytest.raises(ConfigError, match=r"pip install 'bigtrain\[explain\]'"):
        explain.attribute(mlp(), torch.randn(2, 6), "ig")


def test_summaries_against_direct_computation():
    from scipy.stats import spearmanr

    v = torch.tensor([[1.0, -2.0, 0.5], [-3.0, 0.0, 0.5]])
    assert torch.equal(explain.global_importance(v), torch.tensor([2.0, 1.0, 0.5]))
    a, b = [0.1, 0.5, 0.3, 0.9, 0.2, 0.0], [0.2, 0.4, 0.35, 1.0, 0.1, 0.05]
    got = explain.compare_importance(a, b, k=3)
    assert got["spearman"] == pytest.approx(spearmanr(a, b).statistic)
    assert got["top3_overlap"] == 3
    ids = torch.tensor([[4, 5, 4, 9], [5, 5, 9, 9]])
    vals = torch.tensor([[1.0, -1.0, 3.0, 7.0], [2.0, 0.0, 7.0, 7.0]])
    stats = explain.token_importance(ids, vals, skip=[9])
    assert stats == {4: (2.0, 2), 5: (1.0, 3)}
    share = explain.mask_share(vals[:1], torch.tensor([True, False, True, False]))
    assert share == {"attribution_share": 4 / 12, "feature_share": 0.5}


def subject(kind="tabular", **kw):
    names = [f"f{i}" for i in range(6)] if kind == "tabular" else None
    info = {"split": "test", "target": "the predicted class", "task": "classification"}
    return explain.Subject(kind, ["a", "b", "c"], feature_names=names, info=info, **kw)


def test_outputs_are_written_whole_and_siblings_survive(tmp_path):
    from bigtrain.report.explain import section
    from bigtrain.report.html import load_run

    (tmp_path / "summary.json").write_text('{"name": "r", "status": "completed"}')
    model, x = mlp(), torch.randn(4, 6)
    root = tmp_path / "explain"
    ig = explain.attribute(model, x, "ig")
    explain.write_explanation(root / "ig", ig, x, subject())
    sal = explain.attribute(model, x, "saliency")
    summary = explain.write_explanation(root / "saliency", sal, x, subject())
    assert sorted(p.name for p in root.iterdir()) == ["ig", "saliency"]  # no temporaries
    files = sorted(p.name for p in (root / "saliency").iterdir())
    assert files == ["attributions.npz", "examples.png", "global.png", "summary.json"]
    npz = np.load(root / "saliency" / "attributions.npz")
    assert np.allclose(npz["attributions"], sal.values.numpy()) and npz["targets"].shape == (4,)
    assert summary["global"][0]["mean_abs"] == max(r["mean_abs"] for r in summary["global"])
    assert "convergence_delta" not in summary  # saliency has no completeness property
    expected = explain.compare_importance(
        explain.global_importance(sal.values), explain.global_importance(ig.values)
    )
    assert summary["agreement"]["ig"] == pytest.approx(expected)
    explain.write_explanation(root / "ig", ig, x, subject())  # rewriting one method...
    assert (root / "saliency" / "summary.json").is_file()  # ...leaves the other intact
    page = section(load_run(tmp_path))
    assert page.count('<h3 id="explain-') == 2 and page.count("data:image/png;base64,") == 4
    assert "Completeness gap" in page and "Spearman" in page  # ig's, and the agreement
    (root / "lime").mkdir()
    (root / "lime" / "summary.json").write_text("{broken")
    assert "lime/summary.json could not be read" in section(load_run(tmp_path))


def test_image_and_text_outputs(tmp_path):
    from bigtrain.report.explain import section
    from bigtrain.report.html import load_run

    (tmp_path / "summary.json").write_text("{}")
    cnn = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(72, 3))
    x = torch.randn(3, 1, 8, 8)
    a = explain.attribute(cnn, x, "saliency")
    s = explain.write_explanation(
        tmp_path / "explain" / "saliency", a, x, subject("image", foreground=x > 0)
    )
    assert {f["file"] for f in s["figures"]} == {"global.png", "examples.png", "global_map.png"}
    assert 0 < s["foreground"]["attribution_share"] < 1
    ids = token_batch()
    t = explain.attribute(TokenModel(), ids, "ig", baseline=10)
    words = {i: f"w{i}<" for i in range(10)}
    s = explain.write_explanation(
        tmp_path / "explain" / "ig", t, ids, subject("text", decode=words.get, pad_id=10)
    )
    assert len(s["examples"][0]["tokens"]) == 6 and all(r["id"] != 10 for r in s["global"])
    html = (tmp_path / "explain" / "ig" / "tokens.html").read_text()
    assert html.count("<span") == 18 and "&lt;" in html and not re.search(r"w\d<", html)
    page = section(load_run(tmp_path))
    assert "<span title=" in page and not re.search(r"w\d<", page)  # tokens are escaped
    json.loads((tmp_path / "explain" / "ig" / "summary.json").read_text())


def test_no_explanations_no_section(tmp_path):
    from bigtrain.report.explain import section
    from bigtrain.report.html import load_run

    (tmp_path / "summary.json").write_text("{}")
    assert section(load_run(tmp_path)) == ""
    (tmp_path / "explain").mkdir()
    assert section(load_run(tmp_path)) == ""
