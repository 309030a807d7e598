"""Time to quality: `shakespeare-char-reference` (nanoGPT's CPU settings) against the tuned
`shakespeare-char`, trained back to back; plots val loss against wall-clock seconds.

    python bench/lm_time_to_quality.py [--out docs/img/lm_time_to_quality.png]

Prints each run's final val loss and training time, and when the tuned run first reached the
reference's final val loss (its evaluations are every `trainer.eval_every` steps).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path

from matplotlib.figure import Figure

from bigtrain.run import build_run


def train(recipe: str, extra: list[str]) -> tuple[list[tuple[float, float, int]], dict]:
    tmp = Path(tempfile.mkdtemp())
    try:
        summary = build_run(
            recipe, ["trainer.progress=false", *extra], run_dir=tmp / "r", quiet=True
        ).fit()
        records = [json.loads(line) for line in (tmp / "r" / "metrics.jsonl").open()]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    curve = [
        (r["time"], r["loss"], r["step"]) for r in records if r["kind"] == "val" and "time" in r
    ]
    return curve, summary


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/img/lm_time_to_quality.png")
    ap.add_argument("--eval-every", type=int, default=100, help="evaluation interval of both runs")
    args = ap.parse_args()
    extra = [f"trainer.eval_every={args.eval_every}"]
    ref_curve, ref = train("shakespeare-char-reference", extra)
    fast_curve, fast = train("shakespeare-char", extra)
    target = ref_curve[-1][1]
    hit = next(((t, s) for t, loss, s in fast_curve if loss <= target), None)
    print(
        f"reference: val loss {ref_curve[-1][1]:.4f} after {ref['steps']} steps, "
        f"{ref['wall_time_s']:.1f} s"
    )
    print(
        f"tuned:     val loss {fast_curve[-1][1]:.4f} after {fast['steps']} steps, "
        f"{fast['wall_time_s']:.1f} s"
    )
    if hit:
        print(
            f"tuned run reached the reference's {target:.4f} at step {hit[1]}, {hit[0]:.1f} s "
            f"({hit[0] / ref['wall_time_s']:.2f} of the reference's time)"
        )
    else:
        print(f"tuned run did not reach {target:.4f}")
    fig = Figure(figsize=(7, 4.2), layout="constrained")
    ax = fig.subplots()
    for curve, label in (
        (ref_curve, "shakespeare-char-reference (nanoGPT CPU settings)"),
        (fast_curve, "shakespeare-char (tuned defaults)"),
    ):
        ax.plot([c[0] for c in curve], [c[1] for c in curve], marker="o", markersize=3, label=label)
    ax.axhline(target, color="gray", linestyle=":", linewidth=1)
    ax.set(
        xlabel="wall-clock seconds (2 CPU threads)",
        ylabel="val loss (20 fixed batches)",
        title="Time to quality on the embedded Shakespeare corpus",
    )
    ax.grid(alpha=0.3)
    ax.legend()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
