"""Train every shipped classic recipe with its fixed seed and print a Markdown table of the
held-out test metrics (what docs/results.md records).

    python bench/recipe_results.py [--recipes digits-mlp,iris-mlp]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from bigtrain.run import build_run

RECIPES = [
    "digits-mlp",
    "digits-cnn",
    "iris-mlp",
    "wine-mlp",
    "breast-cancer-logreg",
    "diabetes-regression",
    "mnist-mlp",
    "moons-sigmoid-mlp",
    "linear-regression-gd",
    "fashion-mnist-cnn",
]
SHOWN = ["accuracy", "f1", "auroc", "mse", "r2"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default=",".join(RECIPES))
    args = ap.parse_args()
    print("| recipe | steps | train s | " + " | ".join(SHOWN) + " | notes |")
    print("|---|---|---|" + "---|" * len(SHOWN) + "---|")
    for name in args.recipes.split(","):
        tmp = Path(tempfile.mkdtemp())
        try:
            s = build_run(name, ["trainer.progress=false"], run_dir=tmp / "r", quiet=True).fit()
        except Exception as e:  # e.g. Fashion-MNIST not installed
            print(f"| {name} | - | - | " + " | ".join("-" for _ in SHOWN) + f" | {e} |")
            continue
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        t = s["test"]
        cells = [f"{t[k]:.4f}" if k in t else "" for k in SHOWN]
        notes = ", ".join(f"{k} {v}" for k, v in s.get("notes", {}).items())
        print(
            f"| {name} | {s['steps']} | {s['wall_time_s']:.1f} | "
            + " | ".join(cells)
            + f" | {notes} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
