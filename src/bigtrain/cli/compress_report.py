"""``bigtrain compress report RUN_DIR [VARIANT_DIR ...] [--json]``: one table comparing a run
with its compressed variants (pruned, quantized, distilled students): parameters, weights file
size, CPU latency at batch 1 and 32, and the run's monitored metric (docs/quantization.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="compare a run and its compressed variants: size, latency, quality",
        description="For each run folder: parameters, bytes of the weights file, median CPU "
        "latency of one forward pass at batch 1 and 32 (fixed threads), and the run's monitored "
        "metric on its test split (val when it has none), through bigtrain eval's machinery.",
    )
    p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="the base run, then variants")
    p.add_argument("--repeats", type=int, default=20, help="timed passes per batch size (20)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads while timing (1)")
    p.add_argument("--json", action="store_true", help="print the rows as one JSON list")
    p.set_defaults(func=run)


def measure_run(run_dir: str, repeats: int = 20, threads: int = 1) -> dict[str, Any]:
    """One report row for a run folder (plain, or a variant of one)."""
    from bigtrain.cli.compress_quantize import cpu_config
    from bigtrain.cli.eval_cmd import _split_batches, load_run, run_config
    from bigtrain.compress.measure import cpu_latency, file_size, parameter_count
    from bigtrain.errors import DataError

    built, path = load_run(run_dir, "best", cpu_config(run_config(run_dir)))
    trainer = built.trainer
    try:
        split, batches = "test", _split_batches(built, "test", run_dir)
    except DataError:
        split, batches = "val", _split_batches(built, "val", run_dir)
    metrics = trainer.evaluate(batches, split=split)
    metric = trainer.state.monitor.split("/", 1)[-1]
    value = metrics.get(f"{split}/{metric}", metrics.get(f"{split}/loss"))
    if f"{split}/{metric}" not in metrics:
        metric = "loss"
    first = batches[0]
    example = first[0] if isinstance(first, (tuple, list)) else first
    model = trainer.state.model
    latency = cpu_latency(model, example[:1], (1, 32), repeats=repeats, threads=threads)
    return {
        "run": str(run_dir),
        "parameters": parameter_count(model),
        "size_bytes": file_size(path),
        "latency_ms_b1": latency[1] * 1e3,
        "latency_ms_b32": latency[32] * 1e3,
        "metric": f"{split}/{metric}",
        "value": value,
    }


def run(args: argparse.Namespace) -> int:
    from bigtrain.errors import ConfigError

    if args.repeats < 1 or args.threads < 1:
        raise ConfigError("--repeats and --threads must be >= 1")
    rows = [measure_run(r, args.repeats, args.threads) for r in args.runs]
    if args.json:
        print(json.dumps(rows))
        return 0
    from rich.console import Console
    from rich.table import Table

    base = rows[0]
    table = Table(
        title=f"compression report (CPU, {args.threads} thread(s), median of {args.repeats})"
    )
    cols = ("run", "parameters", "size", "x smaller", "ms @1", "ms @32", "metric", "value")
    for col in cols:
        table.add_column(col, justify="left" if col in ("run", "metric") else "right")
    for r in rows:
        table.add_row(
            Path(r["run"]).name,
            f"{r['parameters']:,}",
            f"{r['size_bytes'] / 1e6:.3f} MB",
            f"{base['size_bytes'] / r['size_bytes']:.2f}",
            f"{r['latency_ms_b1']:.3f}",
            f"{r['latency_ms_b32']:.3f}",
            r["metric"],
            f"{r['value']:.4f}" if isinstance(r["value"], float) else str(r["value"]),
        )
    Console(width=max(120, Console().width)).print(table)
    return 0
