"""Dense vs pruned run folders side by side: parameters, weight bytes, accuracy, CPU latency.

Both folders are loaded as ``bigtrain eval`` loads them (variants rebuilt by their restorers).
Latency is the median over many repeats of one forward pass in eval mode under
``torch.inference_mode``, at batch 1 and 32, with ``torch.set_num_threads`` fixed; the two
models alternate per repeat, so a noisy neighbour hurts both alike.

    python bench/pruning.py runs/cnn /tmp/cnn-s30 [more variant folders...] --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def load(run_dir: str):
    from bigtrain.cli.eval_cmd import load_run, run_config

    built, _ = load_run(run_dir, cfg=run_config(run_dir))
    return built


def weight_bytes(model: torch.nn.Module) -> tuple[int, int]:
    """(bytes of the state dict's floating tensors, bytes of their nonzero entries)."""
    total = nonzero = 0
    for t in model.state_dict().values():
        if t.is_floating_point():
            total += t.numel() * t.element_size()
            nonzero += int(t.count_nonzero()) * t.element_size()
    return total, nonzero


def example_batch(built, size: int) -> torch.Tensor:
    batches = built.test_batches or built.trainer.state.val_data
    x = batches[0][0]
    reps = -(-size // len(x))
    return torch.cat([x] * reps)[:size]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("runs", nargs="+", help="the dense run folder first, then its variants")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    built = [load(r) for r in args.runs]
    models = [b.trainer.state.model.eval() for b in built]
    rows = []
    for b, m, r in zip(built, models, args.runs, strict=True):
        batches = b.test_batches or b.trainer.state.val_data
        metrics = b.trainer.evaluate(batches, split="test")
        total, nonzero = weight_bytes(m)
        rows.append({
            "run": r,
            "params": sum(q.numel() for q in m.parameters()),
            "bytes": total,
            "nonzero_bytes": nonzero,
            "accuracy": metrics.get("test/accuracy", float("nan")),
        })  # fmt: skip
    for size in args.batches:
        xs = [example_batch(b, size) for b in built]
        times: list[list[float]] = [[] for _ in models]
        with torch.inference_mode():
            for m, x in zip(models, xs, strict=True):  # warm-up
                for _ in range(20):
                    m(x)
            for _ in range(args.repeats):
                for i, (m, x) in enumerate(zip(models, xs, strict=True)):
                    t0 = time.perf_counter()
                    m(x)
                    times[i].append(time.perf_counter() - t0)
        for row, t in zip(rows, times, strict=True):
            row[f"ms@{size}"] = 1e3 * statistics.median(t)
    base = rows[0]
    head = f"{'run':<34}{'params':>10}{'bytes':>10}{'nonzero B':>11}{'accuracy':>10}"
    head += "".join(f"{'ms@' + str(s):>9}{'x':>6}" for s in args.batches)
    print(f"threads={args.threads} repeats={args.repeats} (median latency; x = speed-up)")
    print(head)
    for row in rows:
        line = f"{row['run'][-33:]:<34}{row['params']:>10,}{row['bytes']:>10,}"
        line += f"{row['nonzero_bytes']:>11,}{row['accuracy']:>10.4f}"
        for s in args.batches:
            ms = row[f"ms@{s}"]
            line += f"{ms:>9.3f}{base[f'ms@{s}'] / ms:>6.2f}"
        print(line)


if __name__ == "__main__":
    main()
