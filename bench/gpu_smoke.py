"""GPU readiness: a GPT-2-124M-shaped model trained through bigtrain's own path (recipe ->
build -> Trainer) in bf16 with torch.compile; prints tokens/s and MFU against the GPU's
published dense bf16 peak (the planner's hardware table) and the measured matmul peak.

    python bench/gpu_smoke.py [--steps 300] [--warmup 30] [--batch-size 16]
    python bench/gpu_smoke.py --dry-run     # CPU, a tiny model, 3 steps: the path still runs

Data: the embedded Shakespeare corpus (char tokens; the vocabulary is padded to GPT-2's 50304
so the head has GPT-2's shape). Timed: optimizer steps after ``--warmup`` (compilation and
allocator warm-up excluded), evaluation off.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import torch

from bigtrain.build import build
from bigtrain.config import load_recipe
from bigtrain.core.callback import Callback, CallbackList
from bigtrain.plan import measured_peak_flops
from bigtrain.plan.hardware import known_hardware

GPT2_124M = [
    "model.n_layer=12",
    "model.n_head=12",
    "model.n_embd=768",
    "model.block_size=1024",
    "model.vocab_size=50304",
    "model.position=learned",
]
TINY = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.block_size=64"]
# device name fragments -> the planner's hardware table entry
TABLE_NAMES = {"H200": "h200", "H100": "h100-80gb", "A100": "a100-80gb"}


class StepClock(Callback):
    """Times optimizer steps after ``warmup`` (compilation excluded)."""

    def __init__(self, warmup: int, cuda: bool) -> None:
        self.warmup, self.cuda, self.t0, self.t1 = warmup, cuda, 0.0, 0.0

    def on_after_step(self, state) -> None:
        if self.cuda:  # kernels run asynchronously: wait for the step to finish
            torch.cuda.synchronize()
        if state.step == self.warmup:
            self.t0 = time.perf_counter()
        self.t1 = time.perf_counter()


def published_peak(device: str) -> tuple[str, float] | None:
    """(table name, dense bf16 FLOP/s) of this GPU from the planner's table, if listed."""
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    for fragment, entry in TABLE_NAMES.items():
        if fragment in name:
            return entry, known_hardware()[entry].peak("bf16")
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model, 3 steps, no compile")
    args = p.parse_args()
    if args.dry_run:
        device, shape, steps, warmup, batch, compile_ = "cpu", TINY, 3, 1, 4, "false"
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --dry-run on a CPU machine")
        device, shape, steps, warmup = "cuda", GPT2_124M, args.steps, args.warmup
        batch, compile_ = args.batch_size, "true"
    overrides = [
        *shape,
        f"data.batch_size={batch}",
        "data.max_chars=200000" if args.dry_run else "data.eval_batches=1",
        f"trainer.device={device}",
        "trainer.precision=bf16",
        f"trainer.compile={compile_}",
        f"trainer.max_steps={warmup + steps}",
        "trainer.eval_every=1000000",
        "trainer.progress=false",
        "trainer.tensorboard=false",
        "optim.fused=false" if args.dry_run else "optim.fused=true",
    ]
    cfg = load_recipe("shakespeare-char", overrides)
    tmp = Path(tempfile.mkdtemp())
    try:
        built = build(cfg, run_dir=tmp, quiet=True)
        built.trainer.state.val_data = None  # training throughput only
        clock = StepClock(warmup, device == "cuda")
        built.trainer.callbacks = CallbackList([*built.trainer.callbacks.callbacks, clock])
        built.trainer.fit()
        if device == "cuda":
            torch.cuda.synchronize()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    tokens_per_step = batch * built.extras["block_size"]
    rate = tokens_per_step * steps / (clock.t1 - clock.t0)
    flops = built.extras["flops_per_token"]
    params = sum(t.numel() for t in built.model.parameters())
    measured = measured_peak_flops(torch.bfloat16, device)
    print(f"device: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}")
    print(f"model: {params / 1e6:.1f}M parameters, {tokens_per_step} tokens/step, bf16")
    print(f"tokens/s: {rate:,.0f} (mean of {steps} steps after {warmup} warm-up steps)")
    print(f"MFU vs measured bf16 matmul peak ({measured / 1e12:.1f} TFLOP/s): "
          f"{rate * flops / measured:.1%}")  # fmt: skip
    table = published_peak(device)
    if table is not None:
        entry, peak = table
        print(f"MFU vs published dense bf16 peak ({entry}, {peak / 1e12:.0f} TFLOP/s): "
              f"{rate * flops / peak:.1%}")  # fmt: skip


if __name__ == "__main__":
    main()
