"""Peak memory while training the small GPT on a large token corpus (memory-mapped, never loaded).

    python bench/lm_memory.py [--mb 200] [--steps 50]

Writes a prepared folder with MB megabytes of random uint16 tokens (vocab 65), trains the
`shakespeare-char-reference` model on it for a few steps in a child process and prints that
process's peak RSS (ru_maxrss) next to the corpus size.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

CHILD = """
import sys, resource
from bigtrain.run import build_run
build_run("shakespeare-char-reference", [
    "data.name=prepared", f"data.path={sys.argv[1]}", f"trainer.max_steps={sys.argv[2]}",
    "trainer.eval_every=25", "trainer.progress=false"], run_dir=sys.argv[3], quiet=True).fit()
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def make_corpus(folder: Path, megabytes: int, vocab: int = 65) -> None:
    from bigtrain.data.text import CharTokenizer

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    n = megabytes * 1024 * 1024 // 2
    chunk = 8 * 1024 * 1024
    with open(folder / "train.bin", "wb") as f:
        for start in range(0, n, chunk):  # written in chunks: this script stays small too
            rng.integers(0, vocab, min(chunk, n - start), dtype=np.uint16).tofile(f)
    rng.integers(0, vocab, 1_000_000, dtype=np.uint16).tofile(folder / "val.bin")
    chars = [chr(32 + i) for i in range(vocab)]
    CharTokenizer(chars).save(folder / "tokenizer.json")
    meta = {
        "tokenizer": "char",
        "vocab_size": vocab,
        "dtype": "uint16",
        "n_train": n,
        "n_val": 1_000_000,
        "characters": n,
        "files": 1,
        "source_hash": "synthetic",
        "val_fraction": 0.01,
    }
    (folder / "meta.json").write_text(json.dumps(meta))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=int, default=200)
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp())
    try:
        make_corpus(tmp / "corpus", args.mb)
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(tmp / "corpus"), str(args.steps), str(tmp / "run")],
            capture_output=True,
            text=True,
            check=True,
        )
        peak = float(out.stdout.strip().splitlines()[-1])
        size = (tmp / "corpus" / "train.bin").stat().st_size / 2**20
        print(
            f"corpus {size:.0f} MiB of tokens ({size * 2**20 / 2 / 1e6:.0f}M tokens); "
            f"peak RSS of the training process {peak:.0f} MiB over {args.steps} steps"
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
