"""Damaged run folders, hostile pointers, full disks and absurd settings: each is one line on
stderr and exit code 2, never a traceback, and nothing that was there is damaged."""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from bigtrain._io import host_tag
from bigtrain.cli.main import main
from bigtrain.core.checkpoint import file_sha256
from bigtrain.run import build_run

QUIET = ["trainer.tensorboard=false", "trainer.progress=false"]


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, out, err


def one_line_error(capsys, *argv) -> str:
    code, out, err = cli(capsys, *argv)
    assert code == 2, (code, out, err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    return err


def snapshot(folder) -> dict[str, str]:
    """Relative path -> SHA-256 of every file under ``folder`` (the lock file aside)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def resume(run_dir, max_steps=4, *extra):
    return ("train", "--run-dir", run_dir, "--resume", f"trainer.max_steps={max_steps}", "--json",
            *extra)  # fmt: skip


@pytest.fixture(scope="module")
def trained_iris(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("trained") / "iris"
    build_run("tiny/iris-mlp", QUIET, run_dir=run_dir, quiet=True).fit()
    return run_dir


@pytest.fixture
def run(trained_iris, tmp_path):
    """A private copy of a finished 2-step tiny/iris-mlp run folder."""
    return shutil.copytree(trained_iris, tmp_path / "run")


@pytest.fixture(scope="module")
def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def latest(run_dir):
    return run_dir / "checkpoints" / (run_dir / "checkpoints" / "latest").read_text().strip()


def flip_middle_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# ------------------------------------------------------------------ 1. bit-flipped weights
def test_bit_flipped_best_weights_are_refused_by_eval(capsys, run):
    flip_middle_byte(run / "checkpoints" / "best" / "model.safetensors")
    before = snapshot(run)
    err = one_line_error(capsys, "eval", run, "--json")
    assert "checksum" in err
    assert snapshot(run) == before


def test_bit_flipped_optimizer_state_is_refused_on_resume(capsys, run):
    flip_middle_byte(latest(run) / "state.safetensors")
    before = snapshot(run)
    err = one_line_error(capsys, *resume(run))
    assert "checksum" in err and "state.safetensors" in err
    assert snapshot(run) == before  # summary and report included


# ------------------------------------------------------- 2. NaN weights with a valid checksum
def test_nan_weights_with_a_valid_checksum_are_refused_by_eval(capsys, run):
    best = run / "checkpoints" / "best"
    weights = load_file(best / "model.safetensors")
    name = next(iter(weights))
    weights[name] = torch.full_like(weights[name], float("nan"))
    save_file(weights, best / "model.safetensors")
    meta = json.loads((best / "best.json").read_text())
    meta["sha256"]["model.safetensors"] = file_sha256(best / "model.safetensors")
    (best / "best.json").write_text(json.dumps(meta))
    err = one_line_error(capsys, "eval", run, "--json")
    assert "non-finite" in err


# ----------------------------------------------------------------- 3. eval --json has no NaN
def _no_nan(token: str):
    raise AssertionError(f"eval --json printed {token}, which is not JSON")


def test_eval_json_writes_non_finite_metrics_as_null(capsys, run, monkeypatch):
    from bigtrain.core.loop import Trainer

    def evaluate(self, batches, split="val"):
        nan, inf = float("nan"), float("inf")
        return {f"{split}/loss": nan, f"{split}/accuracy": 0.5, f"{split}/mse": [inf, 1.0]}

    monkeypatch.setattr(Trainer, "evaluate", evaluate)
    code, out, _ = cli(capsys, "eval", run, "--json")
    assert code == 0
    assert json.loads(out, parse_constant=_no_nan) == {
        "loss": None,
        "accuracy": 0.5,
        "mse": [None, 1.0],
    }


# ------------------------------------------- 4. a file, a read-only folder, a full disk
def test_run_dir_that_is_a_file(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    err = one_line_error(capsys, "train", "tiny/iris-mlp", "--run-dir", tmp_path / "notes.txt")
    assert "is a file" in err
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.fixture
def read_only(monkeypatch):
    """Make every folder under the given root refuse writes as a read-only file system would
    (chmod does not stop root, who runs these tests in CI)."""

    def make(root):
        root = str(root)
        real_open, real_mkdir = os.open, os.mkdir
        writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT

        def refuse(path):
            if os.path.abspath(path).startswith(root):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

        def fake_open(path, flags, *args, **kwargs):
            if flags & writing:
                refuse(path)
            return real_open(path, flags, *args, **kwargs)

        def fake_mkdir(path, *args, **kwargs):
            refuse(path)
            return real_mkdir(path, *args, **kwargs)

        monkeypatch.setattr(os, "open", fake_open)
        monkeypatch.setattr(os, "mkdir", fake_mkdir)

    return make


def test_read_only_run_folder(capsys, run, read_only):
    before = snapshot(run)
    read_only(run)
    err = one_line_error(capsys, *resume(run))
    assert "read-only" in err
    code, out, _ = cli(capsys, "eval", run, "--json")  # reading needs no write access
    assert code == 0 and "accuracy" in json.loads(out)
    assert snapshot(run) == before


def test_new_run_folder_under_a_read_only_parent(capsys, tmp_path, read_only):
    read_only(tmp_path)
    err = one_line_error(capsys, "train", "tiny/iris-mlp", "--run-dir", tmp_path / "new")
    assert "read-only" in err
    assert not (tmp_path / "new").exists()


def test_full_disk_during_a_checkpoint_keeps_the_previous_one(capsys, run, monkeypatch):
    import bigtrain.core.checkpoint as checkpoint

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    before = snapshot(latest(run))
    with monkeypatch.context() as m:
        m.setattr(checkpoint, "save_file", full)
        err = one_line_error(capsys, *resume(run))
    assert "the disk is full" in err
    assert latest(run).name == "step-0000002" and snapshot(latest(run)) == before
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "best",
        "latest",
        "step-0000002",
    ]  # no half-written step-0000004 and no temporary
    code, out, _ = cli(capsys, "eval", run, "--checkpoint", "latest", "--json")
    assert code == 0 and "accuracy" in json.loads(out)
    code, out, _ = cli(capsys, *resume(run))
    assert code == 0 and json.loads(out)["steps"] == 4


# ---------------------------------------------------------- 5. a non-UTF-8 trainer.json
def test_non_utf8_trainer_json_is_refused_on_resume(capsys, run):
    (latest(run) / "trainer.json").write_bytes(b'\xff\xfe{"state": \x80}')
    before = snapshot(run)
    err = one_line_error(capsys, *resume(run))
    assert "trainer.json" in err and "corrupt" in err
    assert snapshot(run) == before


# ------------------------------------------------------------------- 6. an absurd model
def test_absurd_model_is_refused_before_it_is_allocated(capsys, tmp_path, monkeypatch):
    import bigtrain.build.common as common

    devices = []
    real_build = common.build_model

    def spy(*args, **kwargs):
        devices.append(torch.empty(0).device.type)
        return real_build(*args, **kwargs)

    monkeypatch.setattr(common, "build_model", spy)
    monkeypatch.setattr(common, "meminfo", lambda field: 4 * 2**30)  # any machine's RAM
    argv = ["train", "tiny/iris-mlp", "model.hidden=[100000000]", "--run-dir", tmp_path / "r"]
    err = one_line_error(capsys, *argv)
    assert re.search(r"\d{3},\d{3},\d{3} parameters", err), err
    assert devices == ["meta"]  # the real weights (3 GB) were never allocated
    assert not (tmp_path / "r").exists()


# --------------------------------------------------- 7. a latest pointer out of the folder
@pytest.mark.parametrize("where", ["../../elsewhere", "absolute"])
def test_latest_pointer_outside_the_run_is_refused(capsys, run, tmp_path, where):
    elsewhere = shutil.copytree(latest(run), tmp_path / "elsewhere")  # a valid checkpoint
    target = str(elsewhere) if where == "absolute" else where
    (run / "checkpoints" / "latest").write_text(target + "\n")
    before = snapshot(run)
    for argv in (resume(run), ("eval", run, "--checkpoint", "latest", "--json")):
        err = one_line_error(capsys, *argv)
        assert "refusing" in err and "latest" in err
    assert snapshot(run) == before


# ---------------------------------------------- 8. temporaries of a killed save are removed
def test_resume_removes_temporaries_of_dead_processes_only(capsys, run, dead_pid):
    host, ckpt = host_tag(), run / "checkpoints"
    dead = ckpt / f".step-0000002.tmp-{host}-{dead_pid}-abcd1234"
    dead_file = run / f".summary.json.tmp-{host}-{dead_pid}-abcd1234"
    live = ckpt / f".step-0000003.tmp-{host}-{os.getpid()}-abcd1234"
    foreign = ckpt / f".step-0000003.tmp-00000000-{dead_pid}-abcd1234"  # fresh: may be running
    for folder in (dead, live, foreign):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\0" * 8)
    dead_file.write_text("{")
    code, out, _ = cli(capsys, *resume(run, 3))
    assert code == 0 and json.loads(out)["steps"] == 3
    assert not dead.exists() and not dead_file.exists()
    assert live.exists() and foreign.exists()


# ------------------------------------------ 9. batch-size ramp with an epoch limit: one horizon
def test_batch_size_ramp_plans_the_steps_the_run_takes(tmp_path):
    overrides = [
        *QUIET,
        "trainer.max_steps=null",
        "trainer.max_epochs=3",
        "trainer.eval_every=null",
        "batch_size_schedule.name=linear_ramp",
        "batch_size_schedule.start=16",
        "batch_size_schedule.end=64",
        "batch_size_schedule.ramp_steps=20",
        "schedule.name=linear",
        "schedule.warmup_steps=0",
        "schedule.min_lr=0",
        "optim.lr=0.002",
    ]
    run = build_run("tiny/digits-mlp", overrides, run_dir=tmp_path / "r", quiet=True)
    planned = run.trainer.state.max_steps
    summary = run.fit()
    assert summary["steps"] == planned and summary["epochs"] == 3
    # the last step used the last LR of a line that reaches 0 at the planned step
    schedule = run.trainer.state.schedule
    assert schedule(planned) == 0.0
    assert run.trainer.state.lr == pytest.approx(0.002 / planned)


# ----------------------------------------------------------- 10. language-model task settings
@pytest.mark.parametrize(
    ("override", "says"),
    [("task.label_smoothing=0.1", "label_smoothing"), ("task.metrics=[accuracy]", "accuracy")],
)
def test_language_model_refuses_classification_settings(capsys, tmp_path, override, says):
    argv = ["train", "tiny/shakespeare-char", override, "--run-dir", tmp_path / "r", "--json"]
    err = one_line_error(capsys, *argv)
    assert says in err and "language model" in err
    assert not (tmp_path / "r").exists()


def test_penalized_language_model_still_reports_perplexity(tmp_path):
    run_dir = tmp_path / "r"
    overrides = [*QUIET, "regularization.l2=1e-4"]
    summary = build_run("tiny/shakespeare-char", overrides, run_dir=run_dir, quiet=True).fit()
    assert math.isfinite(summary["test"]["perplexity"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r.get("kind") == "val"]
    assert evals and all(math.isfinite(r["perplexity"]) for r in evals)
