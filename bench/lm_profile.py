"""Where a GPT training step's time goes: torch.profiler's top operators for bigtrain's own step
(the recipe's optimizer, precision and callbacks), with the step's MFU.

    python bench/lm_profile.py [--recipe shakespeare-char] [--steps 30] [--warmup 10] [KEY=VALUE ...]

Prints the measured fp32 matmul peak, the median step time and MFU (model FLOPs only: 6N plus
attention per token, as in the planner; the optimizer's own arithmetic such as Muon's
Newton-Schulz iteration is not model FLOPs), then the operators by self CPU time.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from bigtrain.build import build
from bigtrain.config import load_recipe
from bigtrain.core.callback import Callback, CallbackList
from bigtrain.plan import measured_peak_flops


class ProfileSteps(Callback):
    """Profiles optimizer steps ``warmup+1 .. end`` and times each."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.prof = profile(activities=[ProfilerActivity.CPU])
        self.times: list[float] = []
        self._t = 0.0

    def on_after_step(self, state) -> None:
        now = time.perf_counter()
        if state.step == self.warmup:
            self.prof.__enter__()
        elif state.step > self.warmup:
            self.times.append(now - self._t)
        self._t = now

    def close(self) -> None:
        self.prof.__exit__(None, None, None)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipe", default="shakespeare-char")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rows", type=int, default=15)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_recipe(
        args.recipe,
        [
            f"trainer.max_steps={args.warmup + args.steps}",
            "trainer.eval_every=100000",
            "trainer.progress=false",
            "trainer.compile=false",
            *args.overrides,
        ],
    )
    tmp = Path(tempfile.mkdtemp())
    try:
        built = build(cfg, run_dir=tmp, quiet=True)
        built.trainer.state.val_data = None  # training steps only
        probe = ProfileSteps(args.warmup)
        built.trainer.callbacks = CallbackList([*built.trainer.callbacks.callbacks, probe])
        built.trainer.fit()
        probe.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    peak = measured_peak_flops(torch.float32)
    step = statistics.median(probe.times)
    tokens = cfg.data.batch_size * built.extras["block_size"]
    mfu = tokens * built.extras["flops_per_token"] / step / peak
    print(
        f"{args.recipe} {' '.join(args.overrides)}: median step {step * 1e3:.1f} ms, "
        f"{tokens / step:,.0f} tokens/s, MFU {mfu:.1%} of the measured fp32 peak "
        f"{peak / 1e9:.0f} GFLOP/s ({torch.get_num_threads()} threads)"
    )
    table = probe.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows)
    print(table)


if __name__ == "__main__":
    main()
