"""Does distillation help? The same small student trained alone vs distilled from a teacher.

Same recipe, steps and seeds in both arms; only the ``distill:`` section differs. Each teacher
is trained once (a normal run folder under --out, reused when it is already there); each
student is built in memory, trained, and its final weights evaluated on the held-out split
with its own metrics (accuracy and cross-entropy; for the language model, the hard-label
val cross-entropy).

    python bench/distillation.py                       # both comparisons, seeds 0 1 2
    python bench/distillation.py --only digits --seeds 0 1 2 3 4
    python bench/distillation.py --quick               # a smoke run of the script
    python bench/distillation.py --only digits --temperature 2 --alpha 0.5 \
        --student trainer.max_epochs=15                # other settings (student overrides)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from bigtrain.build import build
from bigtrain.config import load_recipe
from bigtrain.run import build_run

QUIET = ["trainer.progress=false", "trainer.tensorboard=false"]

#: name -> (teacher recipe + overrides, student recipe + overrides, distill overrides, metric)
SETUPS = {
    "digits": dict(
        teacher=("digits-mlp", []),  # MLP 256-128, 40 epochs
        student=("digits-mlp", ["model.hidden=[16]", "model.dropout=0.0",
                                "trainer.max_epochs=40"]),
        distill=["distill.temperature=4.0", "distill.alpha=0.5"],
        split="test",
    ),
    "shakespeare": dict(
        # GPT 3 x 144 cut to 400 of its 1000 steps: ~37 min at full length on this shared
        # 2-core machine (cosine schedule over the 400 steps, so it is annealed)
        teacher=("shakespeare-char", ["trainer.max_steps=400", "trainer.eval_every=200"]),
        student=("shakespeare-char", ["model.n_layer=2", "model.n_embd=64",
                                      "trainer.max_steps=200", "trainer.eval_every=200"]),
        distill=["distill.temperature=1.0", "distill.alpha=0.5"],
        split="val",
        dir="teacher-char",
    ),
}  # fmt: skip


def teacher_run(name: str, out: Path, quick: bool) -> Path:
    recipe, over = SETUPS[name]["teacher"]
    run_dir = out / f"{SETUPS[name].get('dir', f'teacher-{name}')}{'-quick' if quick else ''}"
    if (run_dir / "summary.json").is_file():
        return run_dir
    if quick:
        over = [*over, "trainer.max_steps=20", "trainer.max_epochs=null", "trainer.eval_every=10"]
    start = time.perf_counter()
    summary = build_run(recipe, [*over, *QUIET], run_dir=run_dir, quiet=True, report=False).fit()
    print(
        f"teacher {name}: {recipe} {' '.join(over)} -> {run_dir} in "
        f"{time.perf_counter() - start:.0f} s, test {summary.get('test')}",
        file=sys.stderr,
    )
    return run_dir


def train_student(
    name: str, seed: int, teacher: Path | None, quick: bool, extra: list[str] | None = None
) -> dict[str, float]:
    """Held-out metrics of one student run (final weights)."""
    setup = SETUPS[name]
    recipe, over = setup["student"]
    over = [*over, *(extra or []), *QUIET, f"seed={seed}"]
    if quick:
        over += ["trainer.max_steps=20", "trainer.max_epochs=null", "trainer.eval_every=20"]
    if teacher is not None:
        over += [f'distill.teacher="{teacher}"', *setup["distill"]]
    built = build(load_recipe(recipe, over), quiet=True)
    built.trainer.fit()
    batches = built.test_batches if setup["split"] == "test" else built.trainer.state.val_data
    metrics = built.trainer.evaluate(batches, split=setup["split"])
    return {k.split("/", 1)[1]: v for k, v in metrics.items() if isinstance(v, float)}


def teacher_metrics(name: str, run_dir: Path) -> dict[str, float]:
    """The teacher evaluated the same way (final weights of its own recipe, same split)."""
    from bigtrain.callbacks.checkpointing import best_weights
    from bigtrain.cli.eval_cmd import run_config
    from bigtrain.core.checkpoint import load_weights

    built = build(run_config(run_dir), quiet=True)
    load_weights(best_weights(run_dir), built.trainer.state.model)
    split = SETUPS[name]["split"]
    batches = built.test_batches if split == "test" else built.trainer.state.val_data
    metrics = built.trainer.evaluate(batches, split=split)
    return {k.split("/", 1)[1]: v for k, v in metrics.items() if isinstance(v, float)}


def fmt(values: list[float]) -> str:
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.4f} ± {spread:.4f}"


def compare(
    name: str, seeds: list[int], out: Path, quick: bool, extra: list[str] | None = None
) -> None:
    teacher = teacher_run(name, out, quick)
    t = teacher_metrics(name, teacher)
    rows: dict[str, list[dict[str, float]]] = {"alone": [], "distilled": []}
    for seed in seeds:
        for arm, source in (("alone", None), ("distilled", teacher)):
            start = time.perf_counter()
            m = train_student(name, seed, source, quick, extra)
            rows[arm].append(m)
            shown = ", ".join(f"{k} {v:.4f}" for k, v in m.items() if k in ("loss", "accuracy"))
            print(f"  {name} seed {seed} {arm}: {shown} ({time.perf_counter() - start:.0f} s)",
                  file=sys.stderr)  # fmt: skip
    keys = [k for k in ("accuracy", "loss") if k in rows["alone"][0]]
    split = SETUPS[name]["split"]
    print(f"\n{name}: student {' '.join([*SETUPS[name]['student'][1], *(extra or [])])}; "
          f"{' '.join(SETUPS[name]['distill'])}; seeds {seeds}")  # fmt: skip
    print(f"| model | {' | '.join(f'{split} {k}' for k in keys)} |")
    print(f"|---|{'---|' * len(keys)}")
    print(f"| teacher ({SETUPS[name]['teacher'][0]}) | "
          f"{' | '.join(f'{t[k]:.4f}' for k in keys)} |")  # fmt: skip
    for arm in ("alone", "distilled"):
        cells = [fmt([r[k] for r in rows[arm]]) for k in keys]
        print(f"| student {arm} | {' | '.join(cells)} |")
    for k in keys:
        diffs = [d[k] - a[k] for a, d in zip(rows["alone"], rows["distilled"])]
        better = sum((x > 0) if k == "accuracy" else (x < 0) for x in diffs)
        print(f"paired {k} difference (distilled - alone): {fmt(diffs)}; "
              f"distilled better in {better}/{len(diffs)} seeds")  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=sorted(SETUPS), help="run one comparison")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/bench-distill", help="teacher run folders")
    parser.add_argument("--quick", action="store_true", help="a few steps, to check the script")
    parser.add_argument("--temperature", type=float, help="distill.temperature of every setup")
    parser.add_argument("--alpha", type=float, help="distill.alpha of every setup")
    parser.add_argument("--student", nargs="*", default=[], help="key=value student overrides")
    args = parser.parse_args(argv)
    out = Path(args.out)
    for name in [args.only] if args.only else list(SETUPS):
        setup = SETUPS[name]
        if args.temperature is not None:
            setup["distill"] = [d for d in setup["distill"] if "temperature" not in d]
            setup["distill"].append(f"distill.temperature={args.temperature}")
        if args.alpha is not None:
            setup["distill"] = [d for d in setup["distill"] if "alpha" not in d]
            setup["distill"].append(f"distill.alpha={args.alpha}")
        compare(name, args.seeds, out, args.quick, args.student)


if __name__ == "__main__":
    main()
