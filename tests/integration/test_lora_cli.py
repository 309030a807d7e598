"""LoRA runs end to end on bigtrain's tiny GPT: base weights untouched, bitwise resume,
``bigtrain compress merge`` equal to the adapters, generate on both, bad inputs in one line."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file
from tests.integration.test_resume import crash_and_resume, weights

from bigtrain.cli.main import main
from bigtrain.run import build_run

pytest.importorskip("peft", reason="pip install 'bigtrain[transfer]'")

BASE = ["trainer.tensorboard=false", "trainer.progress=false"]
LORA = "tiny/shakespeare-char-lora"


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def base_run(tmp_path_factory):
    """A trained tiny shakespeare-char run: the base the LoRA runs adapt."""
    path = tmp_path_factory.mktemp("base") / "char"
    build_run(
        "tiny/shakespeare-char", [*BASE, "trainer.max_steps=4"], run_dir=path, quiet=True
    ).fit()
    return path


@pytest.fixture(scope="module")
def lora_run(base_run, tmp_path_factory):
    path = tmp_path_factory.mktemp("lora") / "run"
    overrides = [*BASE, f"lora.base_run={base_run}", "trainer.max_steps=4", "optim.lr=0.01"]
    build_run(LORA, overrides, run_dir=path, quiet=True).fit()
    return path


def test_lora_run_trains_adapters_only_on_the_base_weights(base_run, lora_run):
    base = load_file(str(base_run / "checkpoints/best/model.safetensors"))
    tuned = weights(lora_run)
    compared = 0
    for name, tensor in tuned.items():
        if ".lora_" in name:
            continue
        plain = name.replace(".base_layer", "")
        if plain in base:  # the tied head is stored once
            assert torch.equal(tensor, base[plain]), name  # bitwise the base run's
            compared += 1
    assert compared >= len(base) - 1
    b = [t for n, t in tuned.items() if ".lora_B." in n]
    assert b and all(t.abs().sum() > 0 for t in b)  # every adapter trained (B starts at 0)
    config = yaml.safe_load((lora_run / "config.yaml").read_text())
    assert config["lora"]["base_run"] == str(base_run)


def test_lora_resume_is_bitwise(tmp_path, monkeypatch):
    overrides = [
        *BASE,
        "trainer.max_steps=6",
        "trainer.eval_every=3",
        "trainer.checkpoint_every=2",
        "lora.dropout=0.2",  # adapter dropout draws from the RNG the checkpoint restores
    ]
    crash_and_resume(tmp_path, monkeypatch, LORA, overrides, 2)


def test_merge_writes_a_plain_run_equal_to_the_adapters(lora_run, tmp_path, capsys):
    from bigtrain.cli.generate_cmd import load_language_model

    out = tmp_path / "merged"
    code, stdout, err = run_cli(
        capsys, "compress", "merge", str(lora_run), "--out", str(out), "--json"
    )
    assert code == 0, err
    info = json.loads(stdout)
    assert info["merged"]["loss"] == pytest.approx(info["adapters"]["loss"], abs=1e-4)
    assert info["trainable_parameters"] > 0
    assert "lora" not in yaml.safe_load((out / "config.yaml").read_text())
    state = load_file(str(out / "checkpoints/best/model.safetensors"))
    assert not any(".lora_" in k or "base_layer" in k for k in state)
    adapted, tok = load_language_model(lora_run)
    merged, _ = load_language_model(out)
    x = torch.tensor([tok.encode("ROMEO:\nWhat light")])
    with torch.no_grad():
        torch.testing.assert_close(merged(x).logits, adapted(x).logits, rtol=1e-5, atol=1e-5)
    for folder in (lora_run, out):
        code, text, err = run_cli(
            capsys, "generate", str(folder), "--prompt", "ROMEO:", "--max-new-tokens", "8"
        )
        assert code == 0, err
        assert text.startswith("ROMEO:")


def bad(capsys, *argv):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    return err


def test_bad_inputs_are_one_line(base_run, tmp_path, capsys):
    def train(*overrides):
        run_dir = tmp_path / f"r{len(list(tmp_path.iterdir()))}"
        return bad(capsys, "train", LORA, "--run-dir", str(run_dir), "--quiet", *BASE, *overrides)

    err = train("lora.target_modules=[q_proj]")
    assert "'q_proj' matches no Linear layer" in err and "c_attn, c_fc, c_proj, lm_head" in err
    assert "lora.r" in train("lora.r=0")
    assert "not a bigtrain run folder" in train(f"lora.base_run={tmp_path / 'nowhere'}")
    assert "does not fit" in train(f"lora.base_run={base_run}", "model.n_embd=64")
    err = bad(capsys, "compress", "merge", str(base_run), "--out", str(tmp_path / "m"))
    assert "has no LoRA adapters" in err
    assert not (tmp_path / "m").exists()
