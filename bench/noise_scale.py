"""Fixed batch against a batch grown from the gradient noise scale, on Shakespeare characters.

`shakespeare-char` (a fixed batch of 12) and `shakespeare-char-dynamic` (the same model and LR
schedule, starting at 2 micro-batches of 6 and growing toward B_simple; docs/dynamic-batch.md)
train back to back for the same number of optimizer steps. Printed per run: the final val loss,
and the optimizer steps, wall-clock seconds and training examples it took to first reach the
target val loss (default: the fixed run's final one; evaluations every --eval-every steps).

    python bench/noise_scale.py [--max-steps 1000] [--eval-every 50] [--target LOSS]
                                [--seeds 1337 ...] [--out docs/img/dynamic_batch.png]
    python bench/noise_scale.py --quick      # 40 steps on a small corpus: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from matplotlib.figure import Figure

from bigtrain.run import build_run

QUICK = [
    "data.max_chars=20000",
    "data.eval_batches=2",
]
QUICK_DYNAMIC = ["dynamic_batch.warmup_steps=10", "dynamic_batch.adapt_every=5"]


@dataclass
class Run:
    label: str
    summary: dict
    val: list[tuple[int, float, float]]  # (step, time s, val loss)
    train: list[dict] = field(default_factory=list)  # every step's train record
    start_batch: int = 0

    def examples_by(self, step: int) -> int:
        """Training examples (windows) seen in steps 1..step."""
        return sum(r.get("batch_size", self.start_batch) for r in self.train if r["step"] <= step)

    def first_reaching(self, target: float) -> tuple[int, float] | None:
        return next(((s, t) for s, t, loss in self.val if loss <= target), None)


def train(label: str, recipe: str, overrides: list[str]) -> Run:
    tmp = Path(tempfile.mkdtemp())
    try:
        built = build_run(recipe, overrides, run_dir=tmp / "r", quiet=True)
        start_batch = built.trainer.state.train_data.batch_size
        summary = built.fit()
        records = [json.loads(line) for line in (tmp / "r" / "metrics.jsonl").open()]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    val = [(r["step"], r["time"], r["loss"]) for r in records if r["kind"] == "val"]
    train = [r for r in records if r["kind"] == "train"]
    return Run(label, summary, val, train, start_batch)


def row(run: Run, target: float) -> list[str]:
    hit = run.first_reaching(target)
    last = run.train[-1] if run.train else {}
    reached = [str(hit[0]), f"{hit[1]:.1f}", f"{run.examples_by(hit[0]):,}"] if hit else ["-"] * 3
    return [
        run.label,
        f"{run.val[-1][2]:.4f}",
        str(run.summary["steps"]),
        f"{run.summary['wall_time_s']:.1f}",
        *reached,
        str(last.get("batch_size", run.start_batch)),
        f"{last['noise_scale']:.0f}" if "noise_scale" in last else "-",
    ]


def print_table(rows: list[list[str]], target: float) -> None:
    header = [
        "run", "final val", "steps", "wall s",
        f"steps to {target:.4f}", "s to target", "examples to target", "final batch", "B_simple",
    ]  # fmt: skip
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, ["-" * w for w in widths], *rows]:
        print(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))
            )
        )


def plot(runs: list[Run], target: float, out: str) -> None:
    fig = Figure(figsize=(12, 3.8), layout="constrained")
    by_step, by_time, batch = fig.subplots(1, 3)
    for run in runs:
        steps, times, losses = zip(*run.val)
        by_step.plot(steps, losses, marker="o", markersize=3, label=run.label)
        by_time.plot(times, losses, marker="o", markersize=3, label=run.label)
        if any("noise_scale" in r for r in run.train):
            noisy = [r for r in run.train if "noise_scale" in r]
            batch.plot([r["step"] for r in noisy], [r["noise_scale"] for r in noisy],
                       label=f"{run.label}: B_simple")  # fmt: skip
            batch.step([r["step"] for r in noisy], [r["batch_size"] for r in noisy],
                       where="post", label=f"{run.label}: batch")  # fmt: skip
    for ax in (by_step, by_time):
        ax.axhline(target, color="gray", linestyle=":", linewidth=1)
        ax.set(ylabel="val loss")
        ax.grid(alpha=0.3)
        ax.legend()
    by_step.set(xlabel="optimizer step", title="Val loss per step")
    by_time.set(xlabel="wall-clock seconds", title="Val loss per second")
    batch.set(xlabel="optimizer step", ylabel="examples", title="Noise scale and batch")
    batch.grid(alpha=0.3)
    batch.legend(fontsize="small")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"plot: {out}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--max-steps", type=int, default=None, help="steps of both runs (1000)")
    ap.add_argument("--eval-every", type=int, default=None, help="evaluation interval (50)")
    ap.add_argument("--target", type=float, default=None, help="default: fixed run's final")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337])
    ap.add_argument("--out", default=None, help="write a plot here (PNG)")
    ap.add_argument("--quick", action="store_true", help="40 steps on 20,000 characters")
    args = ap.parse_args()
    max_steps = args.max_steps or (40 if args.quick else 1000)
    eval_every = args.eval_every or (10 if args.quick else 50)
    common = [
        f"trainer.max_steps={max_steps}", f"trainer.eval_every={eval_every}",
        "trainer.log_every=1", "trainer.progress=false", "trainer.tensorboard=false",
        *(QUICK if args.quick else []),
    ]  # fmt: skip
    rows, runs, target = [], [], args.target
    for seed in args.seeds:
        fixed = train(f"fixed (seed {seed})", "shakespeare-char", [*common, f"seed={seed}"])
        dynamic = train(
            f"dynamic (seed {seed})",
            "shakespeare-char-dynamic",
            [*common, f"seed={seed}", *(QUICK_DYNAMIC if args.quick else [])],
        )
        # the first seed's fixed run sets the target of every run, unless one was given
        target = fixed.val[-1][2] if target is None else target
        runs += [fixed, dynamic]
    rows = [row(run, target) for run in runs]
    print(f"target val loss {target:.4f}; {max_steps} steps, evaluated every {eval_every}")
    print_table(rows, target)
    if args.out:
        plot(runs[:2], target, args.out)


if __name__ == "__main__":
    main()
