"""``bigtrain lr-find RECIPE``: the LR range test on a throwaway copy of the recipe's model."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``lr-find``."""
    p = subparsers.add_parser(
        "lr-find",
        help="suggest a learning rate with the LR range test",
        description="Train a throwaway copy of the recipe's model while the learning rate grows "
        "exponentially from --start to --end over --steps mini-batches; stop when the smoothed "
        "loss passes 4x its best. Suggests the LR of steepest descent and min-loss/10; writes "
        "lr_find_<name>.png and .csv into --out. No run folder is written.",
    )
    p.add_argument("recipe", help="recipe name or YAML path")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--start", type=float, default=1e-7, help="first learning rate (1e-7)")
    p.add_argument("--end", type=float, default=10.0, help="last learning rate (10)")
    p.add_argument("--steps", type=int, default=100, help="mini-batches of the ramp (100)")
    p.add_argument("--out", default=".", help="folder for the plot and CSV (default: here)")
    p.set_defaults(func=run)


def out_folder(text: str, option: str = "--out") -> Path:
    """``text`` as a folder to write into (created); a ConfigError if it is a file."""
    from bigtrain.errors import ConfigError

    path = Path(text).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {text} is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create {option} folder {text}: {e.strerror}") from None
    return path


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from bigtrain._io import atomic_write_text
    from bigtrain.config import load_recipe
    from bigtrain.report.tuning import lr_find_figure, save_png
    from bigtrain.tune.lr_find import lr_find

    cfg = load_recipe(args.recipe, args.overrides)
    out = out_folder(args.out)
    result = lr_find(cfg, args.start, args.end, args.steps)
    csv_path = atomic_write_text(out / f"lr_find_{cfg.name}.csv", result.to_csv())
    fig = lr_find_figure(
        result.lrs,
        result.losses,
        result.smoothed,
        result.suggestions(),
        f"LR range test: {cfg.name}",
    )
    png = save_png(fig, out / f"lr_find_{cfg.name}.png")
    console = Console()
    table = Table(title=f"{cfg.name}: LR range test over {len(result.lrs)} steps")
    table.add_column("rule")
    table.add_column("learning rate", justify="right")
    table.add_row("steepest descent of the smoothed loss", _lr(result.steepest))
    table.add_row("min smoothed loss / 10", _lr(result.min_over_10))
    table.add_row("the recipe's optim.lr (for comparison)", _lr(cfg.optim.lr))
    console.print(table)
    last = result.lrs[-1] if result.lrs else args.start
    if result.stopped_early:
        console.print(f"stopped at lr {last:.3g}: the loss diverged (4x its best)", highlight=False)
    else:
        console.print(
            f"reached --end {args.end:g} without the loss diverging; a higher --end may show "
            "where it does",
            highlight=False,
        )
    if result.steepest is None:
        console.print("the loss never fell: try a higher --end or more --steps", highlight=False)
    console.print(f"plot: {png}\ncsv: {csv_path}", highlight=False, soft_wrap=True)
    return 0


def _lr(value: float | None) -> str:
    return "-" if value is None else f"{value:.3g}"
