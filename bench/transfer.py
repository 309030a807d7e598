"""Transfer learning: pretrained weights vs the same network from scratch, same data and budget.

Images: EfficientNet-Lite0 with ImageNet weights (``fashion-mnist-efficientnet`` /
``digits-efficientnet``) vs the same architecture randomly initialised (``model.pretrained=false``,
nothing frozen) vs the small CNN recipe, on a few thousand images, same steps, batch and seeds.
Text: MiniLM-L6 fine-tuned (``shakespeare-genre-minilm`` / ``bbc-news-minilm``) vs bigtrain's own
2-layer encoder trained from scratch (``shakespeare-genre``) vs TF-IDF + logistic regression on the
same training texts (scikit-learn, ``sublinear_tf=True, min_df=2``, as in docs/results.md).

Prints one row per run: test accuracy and wall time (provisional on a shared machine).

    python bench/transfer.py                         # everything, 1 seed (CPU: ~1 h)
    python bench/transfer.py --part fashion --seeds 0 1 2
    python bench/transfer.py --quick                 # a smoke run (~minutes)
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bigtrain.run import build_run

QUIET = ["trainer.tensorboard=false", "trainer.progress=false", "trainer.compile=false"]


def run(recipe: str, overrides: list[str], out: Path) -> dict:
    """Train ``recipe`` with ``overrides``; test accuracy and wall time of the whole run."""
    start = time.perf_counter()
    r = build_run(recipe, [*QUIET, *overrides], run_dir=out, quiet=True, report=False)
    summary = r.fit()
    wall = time.perf_counter() - start
    return {"accuracy": summary["test"]["accuracy"], "wall_s": wall,
            "train_s": summary["wall_time_s"]}  # fmt: skip


def tfidf_baseline(recipe: str, overrides: list[str], seed: int) -> float:
    """TF-IDF words + logistic regression on the recipe's train texts, scored on its test."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    from bigtrain.config import load_recipe
    from bigtrain.data.text_classification import classification_texts

    cfg = load_recipe(recipe, [*overrides, f"seed={seed}"])
    train_x, train_y, test_x, test_y, _ = classification_texts(cfg.data, cfg.seed)
    vec = TfidfVectorizer(sublinear_tf=True, min_df=2)
    clf = LogisticRegression(max_iter=2000).fit(vec.fit_transform(train_x), train_y)
    return float(clf.score(vec.transform(test_x), test_y))


def parts(quick: bool) -> dict[str, list[tuple[str, str, list[str]]]]:
    """Part -> [(label, recipe, overrides)]; every row of a part shares data, steps and batch."""
    steps = 4 if quick else 150
    img = [f"trainer.max_steps={steps}", f"trainer.eval_every={steps}", "data.batch_size=32",
           "schedule.warmup_steps=10"]  # fmt: skip
    fashion = [*img, f"data.limit={400 if quick else 2500}"]  # 2,250 train / 250 val / 2,500 test
    small = ["model.image_size=32"]
    scratch = ["model.pretrained=false", "~finetune"]
    txt = [f"trainer.max_steps={steps}", f"trainer.eval_every={steps}", "data.batch_size=32",
           "schedule.warmup_steps=10"]  # fmt: skip
    genre = [*txt, f"data.max_per_class={40 if quick else 600}", "model.block_size=64"]
    bbc = [*txt, f"data.max_per_class={40 if quick else 1000}", "model.block_size=128"]
    return {
        "fashion": [
            ("EfficientNet-Lite0 ImageNet", "fashion-mnist-efficientnet", [*fashion, *small]),
            (
                "EfficientNet-Lite0 random init",
                "fashion-mnist-efficientnet",
                [*fashion, *small, *scratch],
            ),
            ("fashion-mnist-cnn", "fashion-mnist-cnn", [*fashion, "trainer.max_epochs=null"]),
        ],
        "digits": [
            ("EfficientNet-Lite0 ImageNet", "digits-efficientnet", img),
            ("EfficientNet-Lite0 random init", "digits-efficientnet", [*img, *scratch]),
            ("digits-cnn", "digits-cnn", [*img, "trainer.max_epochs=null"]),
        ],
        "genre": [
            ("MiniLM-L6 fine-tuned", "shakespeare-genre-minilm", genre),
            ("bigtrain encoder (shakespeare-genre)", "shakespeare-genre", genre),
            ("TF-IDF + logistic regression", "tfidf:shakespeare-genre", genre),
        ],
        "bbc": [
            ("MiniLM-L6 fine-tuned", "bbc-news-minilm", bbc),
            (
                "bigtrain encoder from scratch",
                "bbc-news-minilm",
                [
                    *bbc,
                    "model.name=encoder",
                    "data.tokenizer=bpe",
                    "data.vocab_size=4096",
                    "~finetune",
                    "optim.lr=0.001",
                ],
            ),
            ("TF-IDF + logistic regression", "tfidf:bbc-news-minilm", bbc),
        ],
    }


def drop_sections(overrides: list[str]) -> tuple[list[str], list[str]]:
    """``~section`` entries remove a recipe section (applied by writing a merged recipe)."""
    return [o for o in overrides if not o.startswith("~")], [
        o[1:] for o in overrides if o.startswith("~")
    ]


def materialise(recipe: str, drops: list[str], model_name: str | None, folder: Path) -> str:
    """A recipe file equal to ``recipe`` without the ``drops`` sections (and with only the model
    name kept when the model changes, since its keys differ)."""
    import yaml

    from bigtrain.config import load_recipe
    from bigtrain.config.loader import dump_config

    raw = yaml.safe_load(dump_config(load_recipe(recipe)))
    for d in drops:
        raw.pop(d, None)
    if model_name is not None:
        raw["model"] = {"name": model_name}
    path = folder / f"{recipe}-{'-'.join(drops) or 'plain'}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["fashion", "digits", "genre", "bbc"], nargs="*")
    ap.add_argument("--seeds", type=int, nargs="*", default=[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", help="append one JSON line per run to this file")
    args = ap.parse_args()
    table = parts(args.quick)
    chosen = args.part or list(table)
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        for part in chosen:
            print(f"\n## {part} (seeds {args.seeds})")
            print(f"{'run':40s} {'test acc':>9s} {'(per seed)':>24s} {'wall s':>8s}")
            for label, recipe, over in table[part]:
                accs, walls = [], []
                for seed in args.seeds:
                    plain, drops = drop_sections(over)
                    if recipe.startswith("tfidf:"):
                        t = time.perf_counter()
                        accs.append(tfidf_baseline(recipe.split(":", 1)[1], plain, seed))
                        walls.append(time.perf_counter() - t)
                        continue
                    name = next(
                        (o.split("=", 1)[1] for o in plain if o.startswith("model.name=")), None
                    )
                    src = materialise(recipe, drops, name, tmp_path) if drops else recipe
                    out = tmp_path / f"{part}-{table[part].index((label, recipe, over))}-{seed}"
                    r = run(src, [*plain, f"seed={seed}"], out)
                    accs.append(r["accuracy"])
                    walls.append(r["wall_s"])
                    if args.json:
                        with open(args.json, "a") as f:
                            f.write(
                                json.dumps({"part": part, "run": label, "seed": seed, **r}) + "\n"
                            )
                per = " ".join(f"{a:.3f}" for a in accs)
                print(f"{label:40s} {statistics.mean(accs):9.3f} {per:>24s} "
                      f"{statistics.median(walls):8.1f}", flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
