"""Privacy against utility: DP-SGD at epsilon in {0.5, 1, 3, 8, inf} on breast cancer and digits.

Each (recipe, epsilon, seed) trains the recipe with ``privacy.target_epsilon`` set (inf: the
``privacy`` section removed, the same recipe otherwise: no clipping, no noise, shuffled
batches) and records the test accuracy of the best checkpoint and the loss-threshold
membership-inference AUC against it (``bigtrain.evaluation.membership``'s loss-threshold
attack: training examples against the held-out val + test examples, balanced by subsampling
the members, averaged over 25 subsamples). Prints a markdown
table of the medians over the seeds (with the range) and writes a plot (docs/privacy.md). ``digits-dp-memorize`` is digits-dp made
to overfit (``VARIANTS``), so that the model trained without DP leaks.

    python bench/privacy_utility.py [--recipes breast-cancer-dp,digits-dp]
        [--epsilons 0.5,1,3,8,inf] [--seeds 0 1 2] [--out docs/img/privacy_utility.png]
        [--json results.json]
    python bench/privacy_utility.py --recipes digits-dp-memorize --seeds 0 --json more.json
    python bench/privacy_utility.py --recipes "" --load results.json more.json  # table + plot
    python bench/privacy_utility.py --quick   # 3 steps a run, one seed: checks that it runs
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import tempfile
from pathlib import Path

from matplotlib.figure import Figure

from bigtrain.build import eval_batches
from bigtrain.evaluation import collect_outputs, loss_threshold_attack, per_example_loss
from bigtrain.run import build_run

BASE = ["trainer.progress=false", "trainer.tensorboard=false"]
SUBSAMPLES = 25  # balanced member subsamples the attack is averaged over
QUICK = ["trainer.max_epochs=null", "trainer.max_steps=3"]
# digits-dp made to overfit, so that the model without DP does leak membership through its
# losses: 15% of the digits to train on (val 70%), a wide MLP, 60 epochs of small batches
VARIANTS = {
    "digits-dp-memorize": (
        "digits-dp",
        [
            "data.val_fraction=0.7",
            "model.hidden=[512,512]",
            "data.batch_size=32",
            "optim.lr=0.002",
            "trainer.max_epochs=60",
        ],
    ),
}


def train_and_attack(name: str, epsilon: float, seed: int, extra: list[str]) -> dict:
    """One run of a recipe (or variant): its test accuracy, the epsilon it spent and the
    membership attack's AUC."""
    recipe, variant = VARIANTS.get(name, (name, []))
    extra = [*variant, *extra]
    dp = ["privacy=null"] if math.isinf(epsilon) else [f"privacy.target_epsilon={epsilon}"]
    tmp = Path(tempfile.mkdtemp())
    try:
        run = build_run(
            recipe, [*BASE, f"seed={seed}", *dp, *extra], run_dir=tmp / "r", quiet=True,
            report=False,
        )  # fmt: skip
        summary = run.fit()  # leaves the best checkpoint's weights in the model (its test)
        data = run.components.data
        model, task = run.trainer.state.model, run.components.task
        held_out = [s for s in (data.val, data.test) if s is not None and len(s)]
        members = per_example_loss(
            collect_outputs(model, task, eval_batches(data.train.x, data.train.y))
        )
        nonmembers = per_example_loss(
            collect_outputs(model, task, [b for s in held_out for b in eval_batches(s.x, s.y)])
        )
        # membership_inference's attack, on losses computed once: each call balances the two
        # sets by subsampling the members, so the mean over subsamples removes that noise
        attacks = [
            loss_threshold_attack(members, nonmembers, seed=seed * SUBSAMPLES + k)
            for k in range(SUBSAMPLES)
        ]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    privacy = summary.get("privacy") or {}
    return {
        "recipe": name,
        "target_epsilon": epsilon,
        "seed": seed,
        "epsilon": privacy.get("epsilon", math.inf),
        "noise_multiplier": privacy.get("noise_multiplier", 0.0),
        "steps": summary["steps"],
        "accuracy": summary["test"]["accuracy"],
        "mia_auc": statistics.mean(a.auc for a in attacks),
        "mia_advantage": statistics.mean(a.advantage for a in attacks),
        "mia_pairs": attacks[0].n_members,
    }


def _spread(values: list[float], fmt: str) -> str:
    mid = statistics.median(values)
    if len(values) == 1:
        return format(mid, fmt)
    return f"{mid:{fmt}} [{min(values):{fmt}}–{max(values):{fmt}}]"


def table(rows: list[dict]) -> str:
    """Markdown: one line per (recipe, epsilon), medians over seeds [min–max]."""
    out = [
        "| recipe | target ε | ε spent | noise σ | steps | test accuracy | MIA AUC | MIA advantage |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for recipe in dict.fromkeys(r["recipe"] for r in rows):
        for eps in dict.fromkeys(r["target_epsilon"] for r in rows if r["recipe"] == recipe):
            group = [r for r in rows if r["recipe"] == recipe and r["target_epsilon"] == eps]
            spent = statistics.median(r["epsilon"] for r in group)
            sigma = statistics.median(r["noise_multiplier"] for r in group)
            out.append(
                f"| {recipe} | {'∞ (no DP)' if math.isinf(eps) else f'{eps:g}'} | "
                f"{'∞' if math.isinf(spent) else f'{spent:.3f}'} | {sigma:.3f} | "
                f"{group[0]['steps']} | {_spread([r['accuracy'] for r in group], '.4f')} | "
                f"{_spread([r['mia_auc'] for r in group], '.3f')} | "
                f"{_spread([r['mia_advantage'] for r in group], '.3f')} |"
            )
    return "\n".join(out)


def plot(rows: list[dict], path: Path) -> None:
    """Test accuracy and membership AUC against epsilon (inf drawn right of the largest)."""
    finite = sorted({r["target_epsilon"] for r in rows if math.isfinite(r["target_epsilon"])})
    inf_at = (finite[-1] * 3) if finite else 1.0

    def x_of(eps: float) -> float:
        return inf_at if math.isinf(eps) else eps

    fig = Figure(figsize=(10, 3.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for (key, title), ax in zip(
        (("accuracy", "Test accuracy"), ("mia_auc", "Membership-inference AUC")), axes
    ):
        for recipe in dict.fromkeys(r["recipe"] for r in rows):
            mine = [r for r in rows if r["recipe"] == recipe]
            eps = sorted({r["target_epsilon"] for r in mine}, key=x_of)
            mids = [
                statistics.median(r[key] for r in mine if r["target_epsilon"] == e) for e in eps
            ]
            line = ax.plot([x_of(e) for e in eps], mids, marker="o", label=recipe)[0]
            ax.scatter(
                [x_of(r["target_epsilon"]) for r in mine], [r[key] for r in mine],
                color=line.get_color(), alpha=0.35, s=12,
            )  # fmt: skip
        if key == "mia_auc":
            ax.axhline(0.5, color="grey", linestyle="--", linewidth=1, label="chance (0.5)")
        ticks = [*finite, inf_at]
        ax.set_xscale("log")
        ax.set_xticks(ticks, [f"{t:g}" for t in finite] + ["∞"])
        ax.minorticks_off()
        ax.set(xlabel="target epsilon (delta 1e-5)", title=title)
        ax.grid(alpha=0.3)
        ax.legend()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default="breast-cancer-dp,digits-dp")
    ap.add_argument("--epsilons", default="0.5,1,3,8,inf")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--out", default="docs/img/privacy_utility.png")
    ap.add_argument("--json", help="also write every run's figures here")
    ap.add_argument("--load", nargs="+", default=[], help="--json files of earlier runs to include")
    ap.add_argument("--quick", action="store_true", help="3 steps a run, one seed")
    args = ap.parse_args()
    extra, seeds = (QUICK, args.seeds[:1]) if args.quick else ([], args.seeds)
    rows = [row for path in args.load for row in json.loads(Path(path).read_text())]
    for recipe in filter(None, args.recipes.split(",")):
        for eps in (float(e) for e in args.epsilons.split(",")):
            for seed in seeds:
                rows.append(train_and_attack(recipe, eps, seed, extra))
                r = rows[-1]
                print(
                    f"{recipe} eps={eps:g} seed={seed}: spent {r['epsilon']:.3f}, "
                    f"accuracy {r['accuracy']:.4f}, MIA AUC {r['mia_auc']:.3f}",
                    flush=True,
                )
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    plot(rows, Path(args.out))
    print(f"plot: {args.out}")


if __name__ == "__main__":
    main()
