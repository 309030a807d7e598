"""`bigtrain explain` on real run folders: files, report section, bad input (one line, exit 2)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("captum", reason="pip install 'bigtrain[explain]'")

from bigtrain.cli.main import main  # noqa: E402
from bigtrain.config import dump_config, load_recipe  # noqa: E402
from bigtrain.run import build_run  # noqa: E402

FAST = ["trainer.tensorboard=false", "trainer.progress=false"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def bc_run(tmp_path_factory):
    """Logistic regression on breast cancer (binary: one logit), the tiny overlay's 2 steps."""
    run_dir = tmp_path_factory.mktemp("explain") / "bc"
    build_run("tiny/breast-cancer-logreg", FAST, run_dir=run_dir, quiet=True, report=False).fit()
    return run_dir


def test_explain_writes_files_report_and_table(capsys, bc_run, tmp_path):
    code, out, err = run_cli(capsys, "explain", bc_run, "--method", "ig", "--inputs", "6")
    assert code == 0, err
    folder = bc_run / "explain" / "ig"
    summary = json.loads((folder / "summary.json").read_text())
    names = {r["feature"] for r in summary["global"]}
    assert len(names) == 30 and "worst radius" in names
    top = summary["global"][0]["feature"]
    assert top in out and "rank" in out  # the table of top features
    assert summary["convergence_delta"]["max_abs"] < 1e-3  # a linear model: IG is exact
    npz = np.load(folder / "attributions.npz")
    assert npz["attributions"].shape == (6, 30) and npz["targets"].shape == (6,)
    # the single logit: the predicted class is explained, as z (class 1) or -z (class 0)
    assert np.array_equal(npz["targets"], (npz["outputs"][:, 1] > 0).astype(np.int64))
    assert "binary model" in err
    page = (bc_run / "report.html").read_text()
    assert 'id="explanations"' in page and 'id="explain-ig"' in page

    mine = tmp_path / "mine"
    code, _, err = run_cli(capsys, "explain", bc_run, "--method", "saliency", "--inputs", "3",
                           "--target", "benign", "--baseline", "mean", "--out", mine)  # fmt: skip
    assert code == 0, err
    summary = json.loads((mine / "summary.json").read_text())
    assert summary["targets"] == [1, 1, 1] and summary["target"] == "benign"
    assert summary["baseline"] == "the mean train input"
    assert "report.html shows RUN_DIR/explain" in err
    assert (folder / "summary.json").is_file()


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["--method", "kernelshap"],
            "unknown attribution method 'kernelshap' (did you mean 'kernel_shap'?)",
        ),
        (["--target", "7"], "--target 7 is out of range: the run's classes are 0..1"),
        (["--target", "benign?"], "--target 'benign?' is not a class (did you mean 'benign'?)"),
        (["--inputs", "0"], "--inputs must be >= 1"),
    ],
)
def test_bad_input_is_one_line_exit_2(capsys, bc_run, argv, message):
    code, _, err = run_cli(capsys, "explain", bc_run, *argv)
    assert code == 2 and err.count("\n") == 1 and message in err, err


def test_refusals_before_any_rebuild(capsys, tmp_path):
    lm = tmp_path / "lm"
    lm.mkdir()
    (lm / "config.yaml").write_text(dump_config(load_recipe("tiny/shakespeare-char")))
    code, _, err = run_cli(capsys, "explain", lm, "--method", "ig")
    assert code == 2 and "is a language model" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "explain", tmp_path / "nothing", "--method", "ig")
    assert code == 2 and "not a bigtrain run folder" in err
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("mine")
    (tmp_path / "bc" / "config.yaml").parent.mkdir()
    (tmp_path / "bc" / "config.yaml").write_text(
        dump_config(load_recipe("tiny/breast-cancer-logreg"))
    )
    code, _, err = run_cli(capsys, "explain", tmp_path / "bc", "--out", keep)
    assert code == 2 and "holds other files" in err and (keep / "notes.txt").is_file()


@pytest.mark.slow
def test_kernel_shap_agrees_with_ig_on_a_linear_model(capsys, bc_run):
    for method in ("ig", "kernel_shap"):
        code, _, err = run_cli(capsys, "explain", bc_run, "--method", method, "--inputs", "6",
                               "--n-samples", "150")  # fmt: skip
        assert code == 0, err
    ks = json.loads((bc_run / "explain" / "kernel_shap" / "summary.json").read_text())
    # on a linear model both methods give w * (x - 0) exactly: the same ranking
    assert ks["agreement"]["ig"]["spearman"] > 0.99 and "agreement with ig" in err
    assert (bc_run / "explain" / "ig" / "summary.json").is_file()  # the other folder stays
    page = (bc_run / "report.html").read_text()
    assert 'id="explain-ig"' in page and 'id="explain-kernel-shap"' in page


@pytest.mark.slow
def test_explain_images_and_text(capsys, tmp_path, monkeypatch):
    """digits-mlp (flat rows shown as 8x8 images) and a text classifier (token ids)."""
    digits = tmp_path / "digits"
    build_run("tiny/digits-mlp", [*FAST, "trainer.max_steps=40"], run_dir=digits, quiet=True,
              report=False).fit()  # fmt: skip
    code, _, err = run_cli(capsys, "explain", digits, "--method", "kernel_shap", "--inputs", "3")
    assert code == 0, err
    s = json.loads((digits / "explain" / "kernel_shap" / "summary.json").read_text())
    assert s["kind"] == "image" and 0 < s["foreground"]["feature_share"] < 1
    npz = np.load(digits / "explain" / "kernel_shap" / "attributions.npz")
    assert npz["attributions"].shape == (3, 1, 8, 8)
    assert npz["display"].min() >= 0 and npz["display"].max() <= 16  # raw pixels 0..16

    text = tmp_path / "genre"
    build_run("tiny/shakespeare-genre", FAST, run_dir=text, quiet=True, report=False).fit()
    for method in ("ig", "saliency", "occlusion"):
        code, _, err = run_cli(capsys, "explain", text, "--method", method, "--inputs", "2")
        assert code == 0, err
        folder = text / "explain" / method
        assert (folder / "tokens.html").read_text().count("<span") > 10
    code, _, err = run_cli(capsys, "explain", text, "--baseline", "mean")
    assert code == 2 and "pad token" in err
    import bigtrain.explain.attribution as attribution

    monkeypatch.setattr(attribution, "find_embedding", lambda model: None)
    code, _, err = run_cli(capsys, "explain", text, "--method", "ig", "--inputs", "1")
    assert code == 2 and err.count("\n") == 1
    assert "needs a differentiable input" in err and "occlusion, kernel_shap, lime" in err


@pytest.mark.slow
def test_explain_a_dp_sgd_run(capsys, tmp_path):
    """Opacus' per-example gradient hooks stay out of the attribution's backward pass."""
    run_dir = tmp_path / "dp"
    build_run("tiny/breast-cancer-dp", FAST, run_dir=run_dir, quiet=True, report=False).fit()
    code, _, err = run_cli(capsys, "explain", run_dir, "--method", "ig", "--inputs", "3")
    assert code == 0, err
    summary = json.loads((run_dir / "explain" / "ig" / "summary.json").read_text())
    assert summary["convergence_delta"]["max_abs"] < 1e-3
