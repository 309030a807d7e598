"""GPT training throughput: bigtrain against a plain nanoGPT-style loop, same model code and
the same batch sampling, alternated in one process; median tokens/s in steady state.

    python bench/lm_throughput.py [--reps 5] [--steps 120] [--warmup 10]

Rows: the plain eager fp32 loop (the baseline), bigtrain running the same settings
(`shakespeare-char-reference`: target ratio >= 0.98), and bigtrain's default fast path
(`shakespeare-char`). MFU is against this machine's measured matmul peak.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch

from bigtrain.build import build, prepared_folder
from bigtrain.config import load_recipe
from bigtrain.core.callback import Callback
from bigtrain.plan import measured_peak_flops


class StepClock(Callback):
    """Times optimizer steps warmup..end (compilation and allocator warm-up excluded)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.t0, self.t1 = warmup, 0.0, 0.0

    def on_after_step(self, state) -> None:
        if state.step == self.warmup:
            self.t0 = time.perf_counter()
        self.t1 = time.perf_counter()


def bigtrain_rate(
    recipe: str, steps: int, warmup: int, extra: list[str] = ()
) -> tuple[float, float, int]:
    """(tokens/s, flops/token, tokens per step) of bigtrain on ``recipe`` with a run folder."""
    cfg = load_recipe(
        recipe,
        [
            f"trainer.max_steps={warmup + steps}",
            "trainer.eval_every=100000",
            "trainer.progress=false",
            "trainer.tensorboard=false",
            *extra,
        ],
    )
    tmp = Path(tempfile.mkdtemp())
    built = build(cfg, run_dir=tmp, quiet=True)
    built.trainer.state.val_data = None  # training throughput only (both sides)
    clock = StepClock(warmup)
    built.trainer.callbacks.callbacks.append(clock)
    from bigtrain.core.callback import CallbackList

    built.trainer.callbacks = CallbackList(built.trainer.callbacks.callbacks)
    built.trainer.fit()
    shutil.rmtree(tmp)
    tokens = cfg.data.batch_size * built.extras["block_size"]
    return tokens * steps / (clock.t1 - clock.t0), built.extras["flops_per_token"], tokens


def plain_rate(recipe: str, steps: int, warmup: int) -> float:
    """nanoGPT's train.py loop, written out by hand (eager, fp32)."""
    from bigtrain.data.tokens import PreparedText, TokenWindowSampler
    from bigtrain.models.gpt import GPT

    cfg = load_recipe(recipe)
    prepared = PreparedText.load(prepared_folder(cfg, quiet=True))
    torch.manual_seed(cfg.seed)
    model = GPT(dataclasses.replace(cfg.model.config, vocab_size=prepared.vocab_size))
    block, batch = model.config.block_size, cfg.data.batch_size
    sampler = TokenWindowSampler(prepared.train_path, prepared.dtype, block, batch, seed=cfg.seed)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    o = cfg.optim
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": o.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=o.lr,
        betas=tuple(o.betas),
        foreach=True,
    )  # torch's default
    warm, total, min_lr = cfg.schedule.warmup_steps, cfg.trainer.max_steps, cfg.schedule.min_lr

    def get_lr(it: int) -> float:
        if it < warm:
            return o.lr * (it + 1) / (warm + 1)
        ratio = (it - warm) / (total - warm)
        return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (o.lr - min_lr)

    t0 = 0.0
    for it in range(warmup + steps):
        if it == warmup:
            t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = get_lr(it)
        x, y = sampler.sample()
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return batch * block * steps / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--warmup", type=int, default=10, help="untimed steps (compilation included)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="1 rep of 5 steps (smoke test)")
    args = ap.parse_args()
    if args.quick:
        args.reps, args.steps, args.warmup = 1, 5, 2
    torch.set_num_threads(args.threads)
    ref, fast = "shakespeare-char-reference", "shakespeare-char"
    peak32 = measured_peak_flops(torch.float32)
    print(
        f"torch {torch.__version__}, {args.threads} threads, fp32 matmul peak "
        f"{peak32 / 1e9:.0f} GFLOP/s; {args.reps} reps x {args.steps} steps"
    )
    # (label, plain-loop baseline, function) ; the baseline is the plain loop on the same shape
    cases = [
        (f"plain eager loop, {ref} shape", ref, lambda: plain_rate(ref, args.steps, args.warmup)),
        (f"bigtrain {ref}", ref, lambda: bigtrain_rate(ref, args.steps, args.warmup)[0]),
        (
            f"plain eager loop, {fast} shape",
            fast,
            lambda: plain_rate(fast, args.steps, args.warmup),
        ),
        (
            f"bigtrain {fast} (default path)",
            fast,
            lambda: bigtrain_rate(fast, args.steps, args.warmup)[0],
        ),
        (
            f"bigtrain {fast} + compile",
            fast,
            lambda: bigtrain_rate(fast, args.steps, args.warmup, ["trainer.compile=true"])[0],
        ),
        (
            f"bigtrain {fast} + bf16",
            fast,
            lambda: bigtrain_rate(fast, args.steps, args.warmup, ["trainer.precision=bf16"])[0],
        ),
    ]
    flops = {r: bigtrain_rate(r, 2, 1)[1] for r in (ref, fast)}
    rates: dict[str, list[float]] = {label: [] for label, _, _ in cases}
    for _ in range(args.reps):  # alternate so that machine noise hits every case alike
        for label, _, fn in cases:
            rates[label].append(fn())
    base = {
        shape: statistics.median(rates[label])
        for label, shape, _ in cases
        if label.startswith("plain")
    }
    for label, shape, _ in cases:
        med = statistics.median(rates[label])
        print(
            f"  {label:<46} {med:8.0f} tok/s  [{min(rates[label]):.0f}..{max(rates[label]):.0f}]"
            f"  ratio to plain {med / base[shape]:.3f}  MFU(fp32 peak) {med * flops[shape] / peak32:.1%}"
        )


if __name__ == "__main__":
    main()
