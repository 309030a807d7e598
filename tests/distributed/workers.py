"""Worker of the two-process tests: run as ``python workers.py OUT_DIR`` with torchrun's variables.

Every scenario builds a recipe with ``bigtrain.build`` exactly as ``bigtrain train`` does (the
strategy comes from ``distributed.strategy`` and joins the group from RANK/WORLD_SIZE), trains,
and rank 0 writes the results into OUT_DIR for the test process to compare with one process.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from bigtrain.build import build
from bigtrain.config import load_recipe

#: scenario -> (recipe, overrides); the test process trains the same on one process
SCENARIOS = {
    "mlp": ("digits-mlp", ["trainer.max_steps=12", "data.batch_size=64"]),
    "mlp_accum": (
        "digits-mlp",
        ["trainer.max_steps=12", "data.batch_size=64", "trainer.grad_accum=2"],
    ),
    "gpt": ("tiny/shakespeare-char", ["trainer.max_steps=4", "data.batch_size=8"]),
    "gpt_fsdp": (
        "tiny/shakespeare-char",
        ["trainer.max_steps=4", "data.batch_size=8", "distributed.strategy=fsdp"],
    ),
    "gpt_fsdp_recompute": (  # activation checkpointing inside FSDP units
        "tiny/shakespeare-char",
        [
            "trainer.max_steps=4",
            "data.batch_size=8",
            "distributed.strategy=fsdp",
            "model.activation_checkpointing=true",
        ],
    ),
}
# dropout off: each process draws its own masks for its half of the batch; fp32: precision auto
# is bf16 on CPUs with native bf16 (AMX), whose rounding the tolerances below are not meant for
COMMON = [
    "trainer.precision=fp32",
    "trainer.progress=false",
    "trainer.eval_every=1000",
    "trainer.health.check_every=1",
    "model.dropout=0.0",
]


def overrides(name: str, cache_dir: str) -> list[str]:
    recipe, extra = SCENARIOS[name]
    text = [f"data.cache_dir={cache_dir}"] if "shakespeare" in recipe else []
    return [*COMMON, *extra, *text]


def train(name: str, cache_dir: str):
    recipe, _ = SCENARIOS[name]
    cfg = load_recipe(recipe, overrides(name, cache_dir))
    built = build(cfg, run_dir=None, quiet=True)
    return built


def eval_batches(val, size: int = 60) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The validation examples in batches of ``size`` (the last one smaller)."""
    x = torch.cat([b[0] for b in val])
    y = torch.cat([b[1] for b in val])
    return [(x[i : i + size], y[i : i + size]) for i in range(0, len(x), size)]


def main(out: Path, cache_dir: str) -> None:
    results: dict[str, object] = {}
    for name in SCENARIOS:
        built = train(name, cache_dir)
        trainer = built.trainer
        calls = []
        if name == "mlp_accum":
            ddp = trainer.state.model

            def counting_allreduce(_, bucket, calls=calls, trainer=trainer):  # DDP default, counted
                calls.append(trainer.state.step)
                work = torch.distributed.all_reduce(bucket.buffer(), async_op=True)
                return work.get_future().then(lambda f: f.value()[0] / 2)

            ddp.register_comm_hook(None, counting_allreduce)
        trainer.fit()
        if name == "gpt_fsdp":
            trainer.save(out / "fsdp_checkpoint")  # sharded: every process writes its part
        weights = trainer.strategy.full_weights(trainer.state.model)
        if trainer.strategy.is_main:
            save_file(weights, str(out / f"{name}.safetensors"))
            results[name] = {"all_reduces": len(calls), "steps": trainer.state.step}
        # digits: 270 examples in 5 batches; the tiny corpus: 16 windows in 3 batches
        batches = eval_batches(trainer.state.val_data, 60 if name.startswith("mlp") else 6)
        if name == "mlp":
            # evaluation: an uneven last batch and an odd number of batches over 2 processes
            results["eval"] = trainer.evaluate(batches, split="val")
        # how this strategy splits them: examples counted here, pairs (forwards) here
        shard = list(trainer.strategy.shard(batches))
        mine = [sum(len(b[0]) for b, counted in shard if counted), len(shard)]
        per_rank = [None] * trainer.strategy.world_size
        torch.distributed.all_gather_object(per_rank, mine)
        if trainer.strategy.is_main:
            results[name]["shard"] = per_rank
    if trainer.strategy.is_main:
        (out / "results.json").write_text(json.dumps(results))
    from bigtrain.distributed import destroy_process_group

    destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2])
