"""``bigtrain optim compare``: race optimizers on a 2-D test function, print a table, save a plot."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from bigtrain.errors import ConfigError

DEFAULT_OPTIMIZERS = "sgd,momentum,nesterov,adagrad,rmsprop,adam"
THRESHOLD = 1e-3  # "steps to reach" column: first step with loss below this


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``optim`` with its ``compare`` sub-command."""
    parser = subparsers.add_parser("optim", help="optimizer tools (compare on 2-D test functions)")
    sub = parser.add_subparsers(dest="optim_command", metavar="SUBCOMMAND")
    parser.set_defaults(func=lambda args: (parser.print_help(), 0)[1])
    cmp = sub.add_parser(
        "compare",
        help="run optimizers on quadratic/rosenbrock/beale and plot their trajectories",
        description="Run optimizers on a 2-D function with a known minimum; print final loss, "
        "distance to the minimum and steps to reach loss < 1e-3; save contour + loss plots.",
    )
    cmp.add_argument("--function", default="rosenbrock", help="quadratic, rosenbrock or beale")
    cmp.add_argument(
        "--optimizers",
        default=DEFAULT_OPTIMIZERS,
        help=f"comma-separated names (default: {DEFAULT_OPTIMIZERS}); also adamw, lamb, lion, "
        "adafactor",
    )
    cmp.add_argument("--steps", type=int, default=500, help="optimizer steps (default: 500)")
    cmp.add_argument(
        "--lr", default="", help="per-optimizer LRs overriding the defaults, e.g. adam=0.1,sgd=1e-3"
    )
    cmp.add_argument(
        "--out",
        default=None,
        help="a .png path, or a folder to write optim_<function>.png into "
        "(default: optim_<function>.png here)",
    )
    cmp.set_defaults(func=run)


def parse_lrs(text: str, optimizers: list[str]) -> dict[str, float]:
    """``"adam=0.1,sgd=1e-3"`` -> ``{"adam": 0.1, "sgd": 0.001}`` (names must be in the race)."""
    lrs: dict[str, float] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            lr = float(value) if sep else math.nan
        except ValueError:
            lr = math.nan
        if not (lr > 0 and math.isfinite(lr)):
            raise ConfigError(f"--lr '{item}' is not NAME=VALUE with VALUE > 0 (e.g. adam=0.1)")
        if name not in optimizers:
            raise ConfigError(
                f"--lr names optimizer '{name}', which is not in --optimizers "
                f"({', '.join(optimizers)})"
            )
        lrs[name] = lr
    return lrs


def plot_path(out: str | None, function: str) -> Path:
    """Where the plot goes: ``out`` ending in .png, or ``optim_<function>.png`` in folder ``out``.

    A folder is an existing one or a path ending in a slash (created); anything else is refused.
    """
    default = f"optim_{function}.png"
    if out is None:
        return Path(default)
    path = Path(out).expanduser()
    if path.is_dir() or out.endswith(("/", os.sep)):
        path = path / default
    elif path.suffix.lower() != ".png":
        raise ConfigError(
            f"--out {out} is neither a folder nor a .png file; give e.g. {path.with_suffix('.png')}"
        )
    existing = path.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent  # missing folders are created; the first existing one must be
    if not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a folder")
    return path


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from bigtrain.errors import did_you_mean
    from bigtrain.optim import compare as cmp

    fn = cmp.get_function(args.function)
    names = [n.strip() for n in args.optimizers.split(",") if n.strip()]
    if not names:
        raise ConfigError("--optimizers is empty; give e.g. --optimizers sgd,adam")
    choices = cmp.optimizer_choices()
    for name in names:
        if name not in choices:
            raise ConfigError(
                f"unknown optimizer '{name}'{did_you_mean(name, choices)}; "
                f"choose one of: {', '.join(choices)}"
            )
    if args.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {args.steps}")
    lrs = parse_lrs(args.lr, names)
    out_path = plot_path(args.out, fn.name)

    results = cmp.compare(fn.name, names, steps=args.steps, lrs=lrs)
    table = Table(title=f"{fn.name}: {args.steps} steps from {fn.start}, minimum at {fn.minimum}")
    for col in ("optimizer", "lr", "final loss", "distance to min", f"steps to loss<{THRESHOLD:g}"):
        table.add_column(col, justify="left" if col == "optimizer" else "right")
    for name, traj in results.items():
        lr = lrs.get(name, cmp.default_lr(fn, name))
        reached = traj.steps_to(THRESHOLD)
        table.add_row(
            name,
            f"{lr:g}",
            f"{traj.losses[-1]:.3g}",
            f"{cmp.distance_to_minimum(fn, traj.points[-1]):.3g}",
            "-" if reached is None else str(reached),
        )
    out = cmp.plot_comparison(results, fn.name, out_path)
    console = Console()
    console.print(table)
    console.print(f"plot: {out}", highlight=False, soft_wrap=True)
    return 0
