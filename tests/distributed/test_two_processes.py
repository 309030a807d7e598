"""Two gloo processes equal one process on the same global batch (DDP, FSDP2, evaluation).

One pair of worker processes (workers.py) runs every scenario; each test compares one of its
results with the same recipe trained here on one process.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from tests.distributed import workers

from bigtrain.build import build
from bigtrain.config import load_recipe
from bigtrain.core.checkpoint import load_weights
from bigtrain.distributed import destroy_process_group
from bigtrain.distributed.consolidate import consolidate
from bigtrain.distributed.launch import free_port
from bigtrain.errors import CheckpointError

WORKER_TIMEOUT_S = 240


def run_workers(out: Path, cache_dir: Path, world_size: int = 2) -> None:
    """Start ``world_size`` workers with torchrun's variables; fail with their output."""
    port = free_port()
    procs = []
    for rank in range(world_size):
        env = {
            **os.environ,
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(world_size),
            "LOCAL_WORLD_SIZE": str(world_size),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "OMP_NUM_THREADS": "1",  # as in this test process (conftest)
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, workers.__file__, str(out), str(cache_dir)],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
        )
    outputs = []
    try:
        for p in procs:
            outputs.append(p.communicate(timeout=WORKER_TIMEOUT_S)[0])
    finally:
        for p in procs:
            p.kill()
    failed = [(i, p.returncode) for i, p in enumerate(procs) if p.returncode != 0]
    assert not failed, f"workers failed {failed}:\n" + "\n".join(o[-3000:] for o in outputs)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    out = tmp_path_factory.mktemp("two_processes")
    cache = tmp_path_factory.mktemp("token_cache")
    run_workers(out, cache)
    return out, cache, json.loads((out / "results.json").read_text())


def one_process(name: str, cache: Path):
    built = workers.train(name, str(cache))
    built.trainer.fit()
    return built


def assert_close(two: dict, one: dict, atol: float, rtol: float = 0) -> None:
    """Every weight equal within ``atol``; tied weights (the GPT's embedding and head) are
    saved once, under either name."""
    missing = one.keys() - two.keys()
    assert two.keys() <= one.keys() and missing <= {"transformer.wte.weight", "lm_head.weight"}
    assert len(missing) <= 1
    for k in two:
        torch.testing.assert_close(two[k], one[k], atol=atol, rtol=rtol, msg=k)


def weights(built) -> dict:
    return {k: v.detach().clone() for k, v in built.model.state_dict().items()}


@pytest.mark.parametrize("name", ["mlp", "mlp_accum"])
def test_ddp_equals_one_process_on_the_global_batch(shared, name):
    out, cache, results = shared
    one = one_process(name, cache)
    two = load_file(out / f"{name}.safetensors")
    assert results[name]["steps"] == one.trainer.state.step == 12
    # 12 Adam steps; the two-process gradient is the mean of two half-batch means
    assert_close(two, weights(one), atol=2e-5)
    untrained = workers.train(name, str(cache))
    moved = max((one.model.state_dict()[k] - v).abs().max() for k, v in weights(untrained).items())
    assert moved > 1e-2  # the tolerance is far below what training changes


def test_grad_accum_all_reduces_only_on_the_last_micro_batch(shared):
    _, _, results = shared
    # one bucket per step (the MLP's gradients fit DDP's 25 MB bucket): 12 steps x 2 micro-
    # batches would all-reduce 24 times without no_sync
    assert results["mlp_accum"]["all_reduces"] == 12


def test_ddp_gpt_equals_one_process(shared):
    out, cache, _ = shared
    one = one_process("gpt", cache)
    assert_close(load_file(out / "gpt.safetensors"), weights(one), atol=2e-5)


@pytest.mark.parametrize("name", ["gpt_fsdp", "gpt_fsdp_recompute"])
def test_fsdp_gpt_equals_one_process(shared, name):
    out, cache, _ = shared
    one = one_process("gpt", cache)  # the same recipe without fsdp
    two = load_file(out / f"{name}.safetensors")
    assert_close(two, weights(one), atol=2e-5)


def test_a_sharded_checkpoint_consolidates_into_one_file(shared, tmp_path):
    out, cache, _ = shared
    checkpoint = tmp_path / "checkpoint"
    shutil.copytree(out / "fsdp_checkpoint", checkpoint)
    assert (checkpoint / "sharded").is_dir() and not (checkpoint / "model.safetensors").exists()
    plain = workers.train("gpt", str(cache)).model  # one process, no sharding
    with pytest.raises(CheckpointError, match="bigtrain consolidate"):
        load_weights(checkpoint, plain)
    consolidate(checkpoint, plain)
    gathered = load_file(out / "gpt_fsdp.safetensors")  # the two processes' full weights
    for name, tensor in gathered.items():
        assert torch.equal(plain.state_dict()[name], tensor), name
    load_weights(checkpoint, plain)  # now one file, its checksum recorded and verified


def test_a_sharded_checkpoint_of_two_processes_resumes_on_one(shared):
    out, cache, _ = shared
    cfg = load_recipe("tiny/shakespeare-char", [
        *workers.overrides("gpt_fsdp", str(cache)), "trainer.max_steps=6"
    ])  # fmt: skip
    try:
        built = build(cfg, run_dir=None, quiet=True)  # fsdp on a group of one
        assert built.trainer.strategy.world_size == 1
        built.trainer.load(out / "fsdp_checkpoint")
        assert built.trainer.state.step == 4
        resumed = built.trainer.strategy.full_weights(built.model)
        for name, tensor in load_file(out / "gpt_fsdp.safetensors").items():
            assert torch.equal(resumed[name], tensor), name
        built.trainer.fit()  # and trains on: the optimizer state was re-sharded too
        assert built.trainer.state.step == 6
    finally:
        destroy_process_group()


def test_evaluation_over_two_processes_equals_one_process_exactly(shared):
    out, cache, results = shared
    built = workers.train("mlp", str(cache))
    built.model.load_state_dict(load_file(out / "mlp.safetensors"))
    batches = workers.eval_batches(built.trainer.state.val_data)
    assert len(batches) % 2 == 1 and len(batches[-1][0]) < 60  # odd count, uneven last batch
    alone = built.trainer.evaluate(batches, split="val")
    assert results["eval"] == alone


def test_evaluation_counts_every_example_once_and_fsdp_keeps_processes_in_step(shared):
    _, _, results = shared
    n = 270  # digits' validation split, in 5 batches of up to 60
    (ddp0, ddp_pairs0), (ddp1, ddp_pairs1) = results["mlp"]["shard"]
    assert ddp0 + ddp1 == n and (ddp_pairs0, ddp_pairs1) == (3, 2)
    # FSDP's forward is a collective: the process with fewer batches adds an uncounted one
    (f0, pairs0), (f1, pairs1) = results["gpt_fsdp"]["shard"]
    assert f0 + f1 == 16 and pairs0 == pairs1 == 2  # 16 windows in batches of 6, 6, 4
