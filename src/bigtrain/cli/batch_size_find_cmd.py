"""``bigtrain batch-size-find RECIPE``: the largest batch that fits, and throughput per size."""

from __future__ import annotations

import argparse


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``batch-size-find``."""
    p = subparsers.add_parser(
        "batch-size-find",
        help="find the largest batch that fits a memory limit, with the throughput curve",
        description="Double the batch from the recipe's, training a few real steps at each size "
        "to measure peak tensor memory and throughput; a size whose memory, extrapolated from "
        "the measured ones, would pass the limit is not tried; then bisect. Writes "
        "batch_size_find_<name>.png and .csv into --out. No run folder is written.",
    )
    p.add_argument("recipe", help="recipe name or YAML path")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument(
        "--memory-limit",
        help="e.g. 4GiB, 512MiB, 8GB (default: 80%% of the available memory on CPU, 90%% of "
        "the free GPU memory on CUDA)",
    )
    p.add_argument("--max-batch", type=int, help="largest batch to try (default: the train split)")
    p.add_argument("--steps", type=int, default=3, help="timed training steps per size (3)")
    p.add_argument("--out", default=".", help="folder for the plot and CSV (default: here)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from bigtrain._io import atomic_write_text
    from bigtrain.cli.lr_find_cmd import out_folder
    from bigtrain.config import load_recipe
    from bigtrain.report.tuning import batch_size_figure, save_png
    from bigtrain.tune.batch_size import find_batch_size, format_bytes, parse_memory

    limit = parse_memory(args.memory_limit) if args.memory_limit is not None else None
    cfg = load_recipe(args.recipe, args.overrides)
    out = out_folder(args.out)
    err = Console(stderr=True)

    def on_probe(p) -> None:
        if p.peak_bytes is None:
            err.print(f"batch {p.batch_size}: skipped, predicted {format_bytes(p.predicted_bytes)}")
        else:
            err.print(
                f"batch {p.batch_size}: {format_bytes(p.peak_bytes)}, {p.throughput:,.0f}/s",
                highlight=False,
            )

    result = find_batch_size(cfg, limit, args.max_batch, args.steps, on_probe)
    csv_path = atomic_write_text(out / f"batch_size_find_{cfg.name}.csv", result.to_csv())
    points = [vars(p) for p in result.curve()]
    fig = batch_size_figure(points, result.limit, result.unit)
    png = save_png(fig, out / f"batch_size_find_{cfg.name}.png") if fig is not None else None
    table = Table(title=f"{cfg.name} on {result.device}: limit {format_bytes(result.limit)}")
    for col in ("batch size", "peak memory", f"{result.unit}/s", "fits"):
        table.add_column(col, justify="right")
    for p in sorted(result.probes, key=lambda p: p.batch_size):
        memory = (
            format_bytes(p.peak_bytes)
            if p.peak_bytes is not None
            else (f"~{format_bytes(p.predicted_bytes)} (predicted, not tried)")
        )
        rate = f"{p.throughput:,.0f}" if p.throughput is not None else "-"
        table.add_row(str(p.batch_size), memory, rate, "yes" if p.fits else "no")
    console = Console()
    console.print(table)
    if result.best is None:
        console.print(f"no batch fits: {result.reason}", highlight=False)
    else:
        fastest = max(result.curve(), key=lambda p: p.throughput if p.fits else -1)
        console.print(
            f"largest batch that fits: {result.best} ({result.reason}); fastest measured: "
            f"{fastest.batch_size} at {fastest.throughput:,.0f} {result.unit}/s",
            highlight=False,
            soft_wrap=True,
        )
    if png is not None:
        console.print(f"plot: {png}", highlight=False, soft_wrap=True)
    console.print(f"csv: {csv_path}", highlight=False, soft_wrap=True)
    return 0
