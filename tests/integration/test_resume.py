"""Every resume path is exact: crash mid-epoch right after a checkpoint, resume in a process with
other RNG state, and get the uninterrupted run's weights, log and summary bit for bit."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from bigtrain.callbacks.checkpointing import Checkpointer
from bigtrain.cli.main import main
from bigtrain.run import build_run

TIMING = {"time", "examples_per_s", "tokens_per_s", "mfu"}
BASE = ["trainer.tensorboard=false", "trainer.progress=false"]


class Crash(Exception):
    """The process dies right after the checkpoint of a given step."""


def crash_after(monkeypatch, step):
    real_save = Checkpointer.save

    def save(self, state):
        real_save(self, state)
        if state.step == step:
            raise Crash

    monkeypatch.setattr(Checkpointer, "save", save)


def records(run_dir):
    out = []
    for line in (run_dir / "metrics.jsonl").read_text().splitlines():
        r = json.loads(line)
        out.append({k: v for k, v in r.items() if k not in TIMING})
    return out


def weights(run_dir):
    latest = (run_dir / "checkpoints/latest").read_text().strip()
    return load_file(str(run_dir / "checkpoints" / latest / "model.safetensors"))


def best(run_dir):
    return load_file(str(run_dir / "checkpoints/best/model.safetensors"))


def assert_same_run(a, b, summary_a, summary_b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
    ba, bb = best(a), best(b)
    for k in ba:
        assert torch.equal(ba[k], bb[k]), k
    assert records(a) == records(b)
    for key in ("steps", "epochs", "status", "best", "test"):
        assert summary_a[key] == summary_b[key], key


def crash_and_resume(
    tmp_path, monkeypatch, recipe, overrides, crash_step, resume_quiet=True, tweak=lambda run: run
):
    straight = tweak(build_run(recipe, overrides, run_dir=tmp_path / "a", quiet=True)).fit()
    with monkeypatch.context() as m:
        crash_after(m, crash_step)
        with pytest.raises(Crash):
            tweak(build_run(recipe, overrides, run_dir=tmp_path / "b", quiet=True)).fit()
    ckpt = tmp_path / "b/checkpoints" / f"step-{crash_step:07d}" / "trainer.json"
    saved = json.loads(ckpt.read_text())["state"]
    torch.manual_seed(1234)  # a new process: other global RNG state
    resumed = build_run(recipe, overrides, run_dir=tmp_path / "b", resume=True, quiet=resume_quiet)
    summary = tweak(resumed).fit()
    assert_same_run(tmp_path / "a", tmp_path / "b", straight, summary)
    return saved


DIGITS = ["trainer.max_epochs=null", "trainer.max_steps=60", "data.batch_size=100", *BASE]
CASES = {
    "plain": [],
    "grad_accum": ["trainer.grad_accum=3"],
    "batch_ramp": [
        "batch_size_schedule.name=linear_ramp",
        "batch_size_schedule.start=32",
        "batch_size_schedule.end=128",
        "batch_size_schedule.ramp_steps=40",
        "batch_size_schedule.multiple_of=16",
    ],
    "reduce_on_plateau": [
        "schedule.name=reduce_on_plateau",
        "schedule.warmup_steps=0",
        "schedule.patience=0",
        "schedule.factor=0.5",
        "trainer.eval_every=4",
        "trainer.monitor=val/loss",
    ],
    "early_stopping": [
        "optim.lr=0.05",
        "trainer.eval_every=3",
        "trainer.early_stopping_patience=2",
        "trainer.monitor=val/loss",
    ],
    "fp16": ["trainer.precision=fp16"],
}


def lively_loss_scale(run):
    """fp16: a scale that grows every 2 steps until gradients overflow, then backs off, so the
    GradScaler's state (scale and growth tracker) decides which steps are skipped."""
    run.trainer.strategy._scaler = torch.amp.GradScaler(
        "cpu", init_scale=2.0**14, growth_interval=2
    )
    return run


@pytest.mark.parametrize("case", list(CASES))
def test_mid_epoch_resume_is_bitwise(tmp_path, monkeypatch, case):
    overrides = [*DIGITS, "trainer.checkpoint_every=7", "model.dropout=0.2", *CASES[case]]
    tweak = lively_loss_scale if case == "fp16" else (lambda run: run)
    saved = crash_and_resume(tmp_path, monkeypatch, "digits-mlp", overrides, 14, tweak=tweak)
    assert saved["batch_in_epoch"] > 0  # the crash fell inside an epoch
    if case == "fp16":
        assert saved["strategy"]["grad_scaler"]["scale"] != 2.0**14  # the scale moved: it matters
    if case == "early_stopping":
        summary = json.loads((tmp_path / "a/summary.json").read_text())
        assert summary["status"].startswith("stopped: early stopping")


def test_resume_with_progress_bar_changed(tmp_path, monkeypatch):
    """Progress on in the first part, --quiet on resume: callback state is matched by name."""
    overrides = [*DIGITS, "trainer.checkpoint_every=7", "trainer.progress=true"]
    crash_and_resume(tmp_path, monkeypatch, "digits-mlp", overrides, 21, resume_quiet=True)


def test_resume_at_an_epoch_end_runs_its_evaluation(tmp_path, monkeypatch):
    """The issue's reproduction: the checkpoint at step 180 falls on an epoch's last step."""
    overrides = [
        "trainer.max_steps=400",
        "trainer.checkpoint_every=20",
        "trainer.early_stopping_patience=2",
        "trainer.monitor=val/loss",
        *BASE,
    ]
    saved = crash_and_resume(tmp_path, monkeypatch, "digits-mlp", overrides, 180)
    assert saved["batch_in_epoch"] == 0 and saved["history"][-1]["step"] == 180
    summary = json.loads((tmp_path / "b/summary.json").read_text())
    assert summary["steps"] == 200 and summary["status"].startswith("stopped: early stopping")


def test_language_model_with_moe_resumes_bitwise(tmp_path, monkeypatch):
    overrides = ["trainer.max_steps=8", "trainer.eval_every=4", "trainer.checkpoint_every=3"]
    crash_and_resume(tmp_path, monkeypatch, "tiny/shakespeare-moe", [*overrides, *BASE], 3)


def test_best_weights_of_the_final_evaluation_are_saved(tmp_path):
    """Checkpoint every step: best/ and the printed test metrics are those of the best step."""
    overrides = ["trainer.max_steps=60", "trainer.checkpoint_every=1", *BASE]
    summary = build_run("digits-mlp", overrides, run_dir=tmp_path / "r", quiet=True).fit()
    meta = json.loads((tmp_path / "r/checkpoints/best/best.json").read_text())
    assert meta["step"] == summary["best"]["step"]
    final = weights(tmp_path / "r")
    if summary["best"]["step"] == 60:
        for k, v in best(tmp_path / "r").items():
            assert torch.equal(v, final[k]), k


def test_finished_run_folders_are_deterministic(tmp_path):
    """Rate-limited checkpoints depend on the clock; a finished run keeps only the final one."""
    overrides = [*DIGITS, "trainer.eval_every=5", "trainer.checkpoint_interval_s=0"]
    build_run("digits-mlp", overrides, run_dir=tmp_path / "a", quiet=True).fit()
    names = sorted(p.name for p in (tmp_path / "a/checkpoints").iterdir())
    assert names == ["best", "latest", "step-0000060"]


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_readme_resume_without_a_recipe(capsys, tmp_path):
    """`bigtrain train --run-dir runs/cnn --resume` continues the folder's own recipe."""
    run_dir = str(tmp_path / "cnn")
    code, _, err = run_cli(capsys, "train", "tiny/digits-cnn", "--run-dir", run_dir, "--quiet")
    assert code == 0, err
    code, out, err = run_cli(
        capsys, "train", "--run-dir", run_dir, "--resume", "trainer.max_steps=4", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["steps"] == 4
    # resuming the finished run again: a clear line, nothing changed
    before = (tmp_path / "cnn/summary.json").read_bytes()
    code, _, err = run_cli(capsys, "train", "--run-dir", run_dir, "--resume", "trainer.max_steps=4")
    assert code == 2 and "is finished" in err and err.count("\n") == 1
    assert (tmp_path / "cnn/summary.json").read_bytes() == before


def test_early_stopped_run_does_not_train_more(capsys, tmp_path):
    run_dir = tmp_path / "r"
    overrides = [
        *DIGITS,
        "optim.lr=0.05",
        "trainer.eval_every=3",
        "trainer.early_stopping_patience=1",
        "trainer.monitor=val/loss",
    ]
    summary = build_run("digits-mlp", overrides, run_dir=run_dir, quiet=True).fit()
    assert summary["status"].startswith("stopped: early stopping")
    code, _, err = run_cli(capsys, "train", "--run-dir", str(run_dir), "--resume")
    assert code == 2 and "early stopping" in err and "nothing to resume" in err


def test_a_folder_without_checkpoint_starts_over(capsys, tmp_path, monkeypatch):
    from bigtrain.core.loop import Trainer

    real = Trainer.train_step

    def die(self, batch):
        if self.state.step == 3:
            raise Crash
        real(self, batch)

    overrides = ["trainer.max_steps=6", "trainer.checkpoint_interval_s=1000", *BASE]
    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_step", die)
        with pytest.raises(Crash):
            build_run("tiny/iris-mlp", overrides, run_dir=tmp_path / "r", quiet=True).fit()
    assert not (tmp_path / "r/checkpoints/latest").exists()
    args = ["train", "tiny/iris-mlp", *overrides, "--run-dir", str(tmp_path / "r"), "--json"]
    code, out, err = run_cli(capsys, *args)
    assert code == 0 and "never wrote a checkpoint; starting it over" in err
    assert json.loads(out)["steps"] == 6


def test_a_locked_run_folder_is_refused(capsys, tmp_path):
    from bigtrain.run import RunLock

    (tmp_path / "r").mkdir()
    lock = RunLock(tmp_path / "r")
    try:
        code, _, err = run_cli(capsys, "train", "tiny/iris-mlp", "--run-dir", str(tmp_path / "r"))
    finally:
        lock.release()
    assert code == 2 and f"in use by process {os.getpid()}" in err and err.count("\n") == 1
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [".lock"]  # nothing written


def test_two_runs_started_together_one_is_refused(tmp_path):
    """Two real processes on one folder: exactly one trains, the other says who holds it."""
    cmd = [sys.executable, "-m", "bigtrain.cli.main", "train", "tiny/digits-mlp",
           "trainer.max_steps=300", *BASE, "--run-dir", str(tmp_path / "r"), "--quiet"]  # fmt: skip
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    results = [p.communicate(timeout=120) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], results
    err = next(e for p, (_, e) in zip(procs, results) if p.returncode == 2)
    assert "in use by process" in err or "already holds a run" in err


def test_kill_9_keeps_every_logged_record_up_to_the_checkpoint(tmp_path):
    """metrics.jsonl is flushed at every checkpoint; the resumed log reads as one run."""
    run_dir = tmp_path / "r"
    args = ["train", "digits-mlp", "trainer.max_epochs=null", "trainer.max_steps=3000",
            "trainer.log_every=5", "trainer.checkpoint_every=50", *BASE, "--run-dir", str(run_dir),
            "--quiet"]  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "bigtrain.cli.main", *args])
    deadline = time.monotonic() + 60
    latest = run_dir / "checkpoints/latest"
    while time.monotonic() < deadline:
        if latest.exists() and int(latest.read_text().strip()[5:]) >= 100:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    step = int(latest.read_text().strip()[5:])
    train_steps = [r["step"] for r in records(run_dir) if r["kind"] == "train"]
    assert [s for s in train_steps if s <= step] == list(range(5, step + 1, 5))
    resumed = subprocess.run(
        [sys.executable, "-m", "bigtrain.cli.main", "train", "--run-dir", str(run_dir), "--resume",
         "trainer.max_steps=400", "--quiet"], capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    train_steps = [r["step"] for r in records(run_dir) if r["kind"] == "train"]
    assert train_steps == list(range(5, 401, 5))
    val_steps = [r["step"] for r in records(run_dir) if r["kind"] == "val"]
    assert val_steps == sorted(set(val_steps))  # no duplicate evaluation record
