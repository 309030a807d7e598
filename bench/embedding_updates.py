"""Dense vs sparse updates of an embedding table as it grows: milliseconds per training step.

One table of R rows x 32 (R = 10^4 .. 10^7) is trained on batches of 1,024 random lookups (a
recommender's item table: a batch touches ~1,000 rows whatever R is). A dense gradient has R
rows, so the optimizer's cost grows with the table; a sparse gradient (``nn.Embedding(sparse=
True)``) has only the looked-up rows. Same model, same batches, side by side in one process:

    python bench/embedding_updates.py [--rows 1e4,1e5,1e6,1e7] [--steps 10] [--threads 2]

Prints a markdown table (median ms per step, optimizer state MB); docs/recommenders.md quotes it.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

DIM, BATCH = 32, 1024
SETUPS = {  # name -> (sparse table?, optimizer factory)
    "adamw (dense)": (False, lambda p: torch.optim.AdamW(p, lr=1e-3, weight_decay=0.0)),
    "adagrad (dense)": (False, lambda p: torch.optim.Adagrad(p, lr=1e-2)),
    "adagrad (sparse)": (True, lambda p: torch.optim.Adagrad(p, lr=1e-2)),
    "sparse_adam (sparse)": (True, lambda p: torch.optim.SparseAdam(p, lr=1e-3)),
    "sgd (sparse)": (True, lambda p: torch.optim.SGD(p, lr=1e-1)),
}


def state_bytes(opt: torch.optim.Optimizer) -> int:
    total = 0
    for state in opt.state.values():
        for v in state.values():
            if torch.is_tensor(v):
                total += v.numel() * v.element_size() if not v.is_sparse else 0
    return total


def time_setup(rows: int, sparse: bool, make_opt, steps: int, seed: int = 0) -> tuple[float, int]:
    gen = torch.Generator().manual_seed(seed)
    table = nn.Embedding(rows, DIM, sparse=sparse)
    target = torch.randn(DIM, generator=gen)
    opt = make_opt(table.parameters())
    batches = [torch.randint(rows, (BATCH,), generator=gen) for _ in range(steps + 3)]
    ys = [torch.randn(BATCH, generator=gen) for _ in range(steps + 3)]
    times = []
    for k, (ids, y) in enumerate(zip(batches, ys)):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(table(ids) @ target, y)
        loss.backward()
        opt.step()
        if k >= 3:  # the first steps allocate the optimizer state
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3, state_bytes(opt)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="1e4,1e5,1e6,1e7")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes = [int(float(r)) for r in args.rows.split(",")]
    print(f"torch {torch.__version__}, {args.threads} threads, dim {DIM}, batch {BATCH} lookups, "
          f"median of {args.steps} steps")  # fmt: skip
    header = "| optimizer (gradient) | " + " | ".join(f"{r:.0e} rows" for r in sizes) + " |"
    print(header)
    print("|" + "---|" * (len(sizes) + 1))
    results = {}
    for name, (sparse, make_opt) in SETUPS.items():
        cells = []
        for rows in sizes:
            ms, state = time_setup(rows, sparse, make_opt, args.steps)
            results[name, rows] = ms
            cells.append(f"{ms:.2f} ms ({state / 2**20:.0f} MB state)" if state else f"{ms:.2f} ms")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
    for rows in sizes:
        ratio = results["adamw (dense)", rows] / results["sparse_adam (sparse)", rows]
        print(f"{rows:.0e} rows: dense AdamW / SparseAdam step time = {ratio:.1f}x")


if __name__ == "__main__":
    main()
