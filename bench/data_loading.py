"""Batches per second: torch DataLoader(TensorDataset) vs bigtrain's InMemoryLoader.

Data: sklearn digits (1,797 x 64, float32), batch 64, shuffled, on the CPU. Each repetition times
whole epochs of both loaders in turn (alternating which goes first), and the median over the
repetitions is reported, so a noisy neighbour hurts both equally.

    python bench/data_loading.py            # 5 repetitions of 20 epochs each
    python bench/data_loading.py --quick    # a smoke run (1 epoch, 2 repetitions)
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils.data import DataLoader, TensorDataset

from bigtrain.data import DataConfig, InMemoryLoader, load_data


def batches_per_second(loader, epochs: int) -> float:
    """Iterate ``epochs`` whole epochs, touching every batch; return batches per second."""
    count = 0
    start = time.perf_counter()
    for _ in range(epochs):
        for _batch in loader:  # each batch is a real (x, y) pair of tensors
            count += 1
    return count / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny run to check the script works")
    parser.add_argument("--epochs", type=int, default=20, help="epochs per repetition")
    parser.add_argument("--reps", type=int, default=5, help="alternated repetitions")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    epochs, reps = (1, 2) if args.quick else (args.epochs, args.reps)

    bundle = load_data(DataConfig(name="digits", val_fraction=0.0, test_fraction=0.0))
    x, y = bundle.train.x, bundle.train.y  # (1797, 64) float32, (1797,) int64
    g = torch.Generator().manual_seed(0)
    torch_loader = DataLoader(
        TensorDataset(x, y), batch_size=args.batch_size, shuffle=True, generator=g
    )
    ours = InMemoryLoader(x, y, batch_size=args.batch_size, shuffle=True, seed=0)
    candidates = {"torch DataLoader(TensorDataset)": torch_loader, "bigtrain InMemoryLoader": ours}

    batches_per_second(torch_loader, 1)  # warm-up: first-call allocations and imports
    batches_per_second(ours, 1)
    results: dict[str, list[float]] = {name: [] for name in candidates}
    for rep in range(reps):
        names = list(candidates) if rep % 2 == 0 else list(reversed(candidates))
        for name in names:
            results[name].append(batches_per_second(candidates[name], epochs))

    print(f"digits {tuple(x.shape)}, batch {args.batch_size}, {epochs} epochs x {reps} repetitions")
    medians = {name: statistics.median(v) for name, v in results.items()}
    for name, value in medians.items():
        print(f"  {name:34s} {value:12.0f} batches/s (median)")
    base, mine = medians.values()
    print(f"  ratio InMemoryLoader / DataLoader: {mine / base:.1f}x")


if __name__ == "__main__":
    main()
