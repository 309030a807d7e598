"""`bigtrain launch` end to end: torchrun restarts, two nodes on loopback, world-size changes on
resume, and bad input. Each launch is two gloo workers on this machine, under a timeout."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from bigtrain.cli.main import main
from bigtrain.core.callback import Callback, CallbackList
from bigtrain.distributed.launch import free_port
from bigtrain.run import build_run

LAUNCH_TIMEOUT_S = 180
STEPS = 300
# the digits MLP, checkpointed every 50 steps, without dropout (one process draws the masks of
# a whole batch, two draw theirs for their halves); one thread per worker everywhere, so that
# every run below computes with the same kernels
RECIPE = [
    "digits-mlp",
    f"trainer.max_steps={STEPS}",
    "trainer.checkpoint_every=50",
    "trainer.progress=false",
    "model.dropout=0.0",
    "data.drop_last=true",
]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def bigtrain(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "bigtrain.cli.main", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def finish(p: subprocess.Popen, timeout: float = LAUNCH_TIMEOUT_S) -> tuple[int, str, str]:
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"timed out after {timeout} s:\n{err[-3000:]}")
    return p.returncode, out, err


def final_weights(run_dir: Path, step: int = STEPS) -> dict[str, torch.Tensor]:
    return load_file(run_dir / "checkpoints" / f"step-{step:07d}" / "model.safetensors")


def steps_logged(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r["step"] for r in map(json.loads, lines) if r.get("kind") == "train"]


@pytest.fixture(scope="module")
def two_node_run(tmp_path_factory) -> Path:
    """Two `bigtrain launch --nnodes 2` commands (one process each) form one group."""
    run_dir = tmp_path_factory.mktemp("two_nodes") / "run"
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [
        bigtrain("launch", "--nnodes", "2", "--node-rank", str(rank), "--nproc-per-node", "1",
                 "--rdzv-endpoint", endpoint, "train", *RECIPE, "--run-dir", str(run_dir))
        for rank in (0, 1)
    ]  # fmt: skip
    results = [finish(p) for p in nodes]
    for code, _, err in results:
        assert code == 0, err[-3000:]
    return run_dir


def test_two_nodes_on_loopback_train_together_and_only_rank_0_writes(two_node_run, capsys):
    summary = json.loads((two_node_run / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == STEPS
    assert summary["test"]["accuracy"] > 0.9
    logged = steps_logged(two_node_run)
    assert logged == sorted(set(logged)) and logged[-1] == STEPS  # one writer, no duplicates
    # a DDP run folder is a plain one: its weights have no "module." prefix
    assert not any(k.startswith("module.") for k in final_weights(two_node_run))
    assert main(["eval", str(two_node_run), "--json"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["accuracy"] == pytest.approx(summary["test"]["accuracy"], abs=1e-9)


def test_a_killed_worker_restarts_the_group_and_the_run_ends_as_if_uninterrupted(
    two_node_run, tmp_path
):
    run_dir = tmp_path / "run"
    # one worker is killed once; a second restart is allowed because a restarted gloo group
    # has been seen, rarely, to abort at start-up ("terminate called without an active
    # exception", in torch): the run must still end as if uninterrupted
    p = bigtrain("launch", "--nproc-per-node", "2", "--max-restarts", "2", "train", *RECIPE,
                 "--run-dir", str(run_dir))  # fmt: skip
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while not (run_dir / "checkpoints" / "step-0000100").is_dir():
        assert p.poll() is None and time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.02)
    workers = Path(f"/proc/{p.pid}/task/{p.pid}/children").read_text().split()
    assert len(workers) == 2
    os.kill(int(workers[1]), signal.SIGKILL)  # one worker dies mid-run
    code, out, err = finish(p)
    assert code == 0, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == STEPS
    restarted = final_weights(run_dir)
    uninterrupted = final_weights(two_node_run)  # also two processes: gloo sums alike
    assert restarted.keys() == uninterrupted.keys()
    for name, tensor in uninterrupted.items():
        assert torch.equal(restarted[name], tensor), name


class Crash(Exception):
    pass


class CrashAfter(Callback):
    """Ends the process's training abruptly once step ``step`` is checkpointed (a crash)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, state) -> None:
        if state.step >= self.step and state.last_checkpoint is not None:
            if state.last_checkpoint.name == f"step-{state.step:07d}":
                raise Crash(state.step)


def torchrun_workers(*args: str) -> list[subprocess.Popen]:
    """Two `python -m bigtrain.cli.main train ...` workers with the variables torchrun gives
    them (what `torchrun -m bigtrain.cli.main` starts, without the agent: quicker to start)."""
    port = str(free_port())
    return [
        subprocess.Popen(
            [sys.executable, "-m", "bigtrain.cli.main", *args],
            env={
                **ENV,
                "RANK": str(rank),
                "LOCAL_RANK": str(rank),
                "WORLD_SIZE": "2",
                "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]


@pytest.mark.slow  # 35 s; the 2 -> 1 sharded resume is also in test_two_processes.py
def test_a_run_changes_world_size_on_resume_and_continues_its_schedule(tmp_path):
    """One 300-step run (one cosine schedule): 2 processes until they die after step 100, 1
    process until it crashes after step 200, then 2 processes again to the end. It takes the
    same global batches in the same order, at the same learning rates, as one process straight
    through."""
    run_dir = tmp_path / "resized"
    first = torchrun_workers("train", *RECIPE, "--run-dir", str(run_dir))
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while not (run_dir / "checkpoints" / "step-0000100").is_dir():
        assert all(p.poll() is None for p in first), [finish(p)[2][-2000:] for p in first]
        assert time.monotonic() < deadline, "no checkpoint was written"
        time.sleep(0.02)
    for p in first:
        p.kill()  # both processes die mid-run
        p.communicate()

    one = build_run(RECIPE[0], RECIPE[1:], run_dir=run_dir, resume=True, quiet=True)
    assert one.trainer.strategy.world_size == 1
    callbacks = one.trainer.callbacks.named
    one.trainer.callbacks = CallbackList({**callbacks, "crash": CrashAfter(200)})
    with pytest.raises(Crash):
        one.fit()  # here, in this process
    assert json.loads((run_dir / "checkpoints" / "step-0000200" / "trainer.json").read_text())

    last = torchrun_workers("train", *RECIPE, "--resume", "--run-dir", str(run_dir), "--quiet")
    for code, _, err in [finish(p) for p in last]:
        assert code == 0, err[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["steps"] == STEPS
    logged = steps_logged(run_dir)
    assert logged[-1] == STEPS and len(logged) >= len(set(logged))  # resumed parts re-log

    straight = build_run(RECIPE[0], RECIPE[1:], run_dir=tmp_path / "straight", quiet=True)
    straight.fit()
    expected = final_weights(tmp_path / "straight")
    resized = final_weights(run_dir)
    untrained = weights_at_start(tmp_path)
    for name, tensor in expected.items():
        # DDP averages two half-batch gradients, one process takes the whole batch's mean:
        # equal up to float rounding, far below what training moved the weights
        torch.testing.assert_close(
            resized[name], tensor, atol=1e-4, rtol=0, msg=lambda m, name=name: f"{name}: {m}"
        )
        assert (tensor - untrained[name]).abs().max() > 1e-2


def weights_at_start(tmp_path: Path) -> dict[str, torch.Tensor]:
    run = build_run(RECIPE[0], RECIPE[1:], run_dir=tmp_path / "untrained", quiet=True)
    try:
        return {k: v.detach().clone() for k, v in run.components.model.state_dict().items()}
    finally:
        run.close()


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# bad input fails in the launching process, before torchrun starts anything: these run the
# CLI in this process


@pytest.mark.parametrize(
    "args, message",
    [
        (["--nproc-per-node", "0", "train", "digits-mlp"], "--nproc-per-node must be at least 1"),
        (
            ["--nproc-per-node", "2", "train", "digits-mlp", "distributed.strategy=dpp"],
            "did you mean 'ddp'",
        ),
        (
            ["--nproc-per-node", "2", "train", "digits-mlp", "data.batch_size=65"],
            "not a multiple of the 2 processes",
        ),
        (["--nproc-per-node", "2", "eval", "runs/x"], "runs `train RECIPE ...`"),
        (["--nnodes", "2", "train", "digits-mlp"], "needs --run-dir"),
        (["--nnodes", "2", "--node-rank", "2", "train", "digits-mlp"], "--node-rank must be in"),
        (["--rdzv-endpoint", "nohost", "train", "digits-mlp"], "must be HOST:PORT"),
    ],
)
def test_bad_launches_fail_before_any_worker_starts_with_one_line(args, message, capsys):
    assert main(["launch", *args]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and message in err, err


def test_a_port_in_use_is_one_line(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        code = main(["launch", "--nproc-per-node", "2", "--rdzv-endpoint", f"127.0.0.1:{port}",
                     "train", "digits-mlp"])  # fmt: skip
    assert code == 2 and error_lines(capsys.readouterr().err) == [
        f"error: port {port} on 127.0.0.1 is in use (another job or program holds it); "
        "choose another --rdzv-endpoint HOST:PORT"
    ]


FSDP_NO_BLOCKS = (
    "distributed.strategy fsdp shards a model block by block, and 'MLP' has no blocks; use "
    "distributed.strategy=ddp"
)


def test_fsdp_on_a_model_without_blocks_is_one_line(tmp_path, capsys):
    # the strategy is the same on a group of one (no torchrun) as on every worker
    code = main(["train", "digits-mlp", "distributed.strategy=fsdp", "--run-dir",
                 str(tmp_path / "r")])  # fmt: skip
    assert code == 2 and error_lines(capsys.readouterr().err) == [f"error: {FSDP_NO_BLOCKS}"]
    assert not (tmp_path / "r").exists()  # nothing of the failed run is left
    assert not torch.distributed.is_initialized()  # the group of one was left


@pytest.mark.parametrize("rank, printed", [("0", True), ("1", False)])
def test_a_recipe_error_is_printed_by_worker_0_only_and_others_by_each(
    rank, printed, monkeypatch, capsys
):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", rank)
    assert main(["train", "digits-mlp", "distributed.strategy=single"]) == 2
    lines = error_lines(capsys.readouterr().err)
    assert lines == (["error: rank 0: distributed.strategy is 'single' but torchrun started 2 "
                      "processes; use ddp or fsdp (or auto)"] if printed else [])  # fmt: skip
    monkeypatch.setenv("RANK", rank)  # any other error: every worker says it, with its rank
    assert main(["train", "--resume", "--run-dir", "/nonexistent/run"]) == 2
    assert error_lines(capsys.readouterr().err) == [
        f"error: rank {rank}: /nonexistent/run is not a bigtrain run folder (no config.yaml)"
    ]


def test_a_lost_peer_is_one_line_naming_the_timeout(monkeypatch, capsys):
    """What a worker prints when a collective fails (a peer died, or stopped answering for
    distributed.timeout_s): gloo raises DistError or a RuntimeError naming itself."""
    import bigtrain.cli.train_cmd as train_cmd

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    failures = [
        torch.distributed.DistBackendError("Timed out waiting 600000ms for recv\nmore lines"),
        RuntimeError("[../gloo/transport/tcp/pair.cc:537] Read error: Connection reset by peer"),
    ]
    for failure in failures:

        def fail(args, failure=failure):
            raise failure

        monkeypatch.setattr(train_cmd, "run_train", fail)
        assert main(["train", "digits-mlp"]) == 2
        lines = error_lines(capsys.readouterr().err)
        assert len(lines) == 1 and lines[0].startswith("error: rank 1: lost contact with the other")
        assert "distributed.timeout_s" in lines[0]
