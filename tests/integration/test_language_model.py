"""Language models end to end: learning, exact resume, generation and its errors."""

import json

import pytest
import torch
from safetensors.torch import load_file

from bigtrain.build import resolve_precision
from bigtrain.cli.main import main
from bigtrain.core.loop import Trainer
from bigtrain.run import build_run

SMALL = [
    "data.max_chars=30000",
    "data.eval_batches=2",
    "model.n_layer=2",
    "model.n_embd=32",
    "model.n_head=2",
    "model.block_size=32",
    "trainer.eval_every=20",
    "trainer.progress=false",
    "trainer.tensorboard=false",
    "trainer.checkpoint_interval_s=0",
    "schedule.warmup_steps=5",
]


@pytest.fixture(scope="module")
def lm_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("lm") / "run"
    summary = build_run(
        "shakespeare-char-reference",
        [*SMALL, "trainer.max_steps=120", "optim.lr=0.01"],
        run_dir=run_dir,
        quiet=True,
    ).fit()
    return run_dir, summary


def test_small_gpt_learns_and_logs_throughput(lm_run):
    run_dir, summary = lm_run
    # uniform guessing over the ~60 characters of the excerpt is ln(60) = 4.1
    assert summary["test_split"] == "val" and summary["test"]["loss"] < 3.1  # measured 2.93
    assert summary["test"]["perplexity"] == pytest.approx(
        2.718281828 ** summary["test"]["loss"], rel=1e-4
    )
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    train = [r for r in records if r["kind"] == "train"]
    assert train[-1]["tokens_per_s"] > 0 and 0 < train[-1]["mfu"] < 1
    assert any(r["kind"] == "train_eval" for r in records)


def test_generate_cli(lm_run, capsys):
    run_dir, _ = lm_run
    args = ["generate", str(run_dir), "--prompt", "ROMEO:", "--max-new-tokens", "40", "--seed", "3"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert first.startswith("ROMEO:") and len(first) > 40
    assert main(args) == 0
    assert capsys.readouterr().out == first  # same seed, same text
    assert main(["generate", str(run_dir), "--prompt", "ROMEO€"]) == 2
    assert "'€'" in capsys.readouterr().err
    assert main(["generate", str(run_dir), "--prompt", "A" * 33]) == 2
    assert "longer than the model's context of 32" in capsys.readouterr().err


def test_language_model_resume_is_bitwise(tmp_path, monkeypatch):
    overrides = [*SMALL, "trainer.max_steps=40", "model.dropout=0.1"]
    build_run("shakespeare-char-reference", overrides, run_dir=tmp_path / "a", quiet=True).fit()
    real_step = Trainer.train_step

    def crash_at_30(self, batch):
        if self.state.step == 30:
            raise KeyboardInterrupt
        real_step(self, batch)

    monkeypatch.setattr(Trainer, "train_step", crash_at_30)
    with pytest.raises(KeyboardInterrupt):
        build_run("shakespeare-char-reference", overrides, run_dir=tmp_path / "b", quiet=True).fit()
    monkeypatch.setattr(Trainer, "train_step", real_step)
    torch.manual_seed(99)
    build_run(
        "shakespeare-char-reference", overrides, run_dir=tmp_path / "b", resume=True, quiet=True
    ).fit()
    a = load_file(str(tmp_path / "a/checkpoints/step-0000040/model.safetensors"))
    b = load_file(str(tmp_path / "b/checkpoints/step-0000040/model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_precision_auto_resolves_to_a_real_choice():
    assert resolve_precision("fp32", "cpu") == "fp32"
    native = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")


def test_bf16_training_runs_and_learns(tmp_path):
    summary = build_run(
        "shakespeare-char-reference",
        [*SMALL, "trainer.max_steps=60", "optim.lr=0.01", "trainer.precision=bf16"],
        run_dir=tmp_path / "r",
        quiet=True,
    ).fit()
    assert summary["test"]["loss"] < 3.5  # measured 3.27 (ln 60 = 4.1 is guessing)
