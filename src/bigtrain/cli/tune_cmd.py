"""``bigtrain tune RECIPE --space SPACE --trials N``: an Optuna study of real runs."""

from __future__ import annotations

import argparse

SHOWN = 10  # best trials printed (trials.csv has them all)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``tune``."""
    p = subparsers.add_parser(
        "tune",
        help="search hyperparameters with Optuna (TPE + median pruning)",
        description="Run trials of a recipe with values drawn from a search space (TPE, seeded; "
        "the median rule prunes weak trials) and keep the study in --study-dir: running the "
        "command again continues it up to --trials trials in total. Writes trials.csv, "
        "history.png, params.png and best.yaml (the recipe with the best values).",
    )
    p.add_argument("recipe", help="recipe name or YAML path")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides applied to every trial")
    p.add_argument(
        "--space", required=True, help="search space YAML (or a shipped space: digits-cnn)"
    )
    p.add_argument(
        "--trials",
        type=int,
        default=20,
        help="trials in the study in total, counting those of earlier runs (default 20)",
    )
    p.add_argument("--study-dir", help="study folder (default studies/<recipe name>)")
    p.add_argument("--quiet", action="store_true", help="no line per trial")
    p.set_defaults(func=run)


def _fmt(value, digits: int = 4) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return "-" if value is None else str(value)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from bigtrain.tune.search import import_optuna, tune

    optuna = import_optuna()  # before anything: a missing extra is the first thing to say
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial instead
    err = Console(stderr=True)

    def on_trial(row: dict, total: int) -> None:
        if args.quiet:
            return
        values = "  ".join(f"{k}={_fmt(v)}" for k, v in row["params"].items())
        took = f" [{row['seconds']:.0f} s]" if row["seconds"] is not None else ""
        if row["error"]:  # why a trial diverged, in its first words
            took += f" ({row['error'].split(':')[0]})"
        err.print(
            f"trial {row['number']} ({row['state']}): {_fmt(row['value'])}  {values}{took}",
            highlight=False,
        )

    result = tune(args.recipe, args.space, args.trials, args.study_dir, args.overrides, on_trial)
    rows = [r for r in result.rows if r["value"] is not None]
    rows.sort(key=lambda r: r["value"], reverse=result.mode == "max")
    test_key = result.monitor.split("/", 1)[1]
    table = Table(
        title=f"{len(result.rows)} trials in {result.study_dir} ({result.ran} run now); "
        f"best {min(SHOWN, len(rows))} by {result.monitor}"
    )
    # the last part of each key (lr, dropout) keeps the table narrow; full keys when ambiguous
    short = [p.key.rsplit(".", 1)[-1] for p in result.space]
    if len(set(short)) < len(short):
        short = [p.key for p in result.space]
    for col in ("trial", "state", result.monitor, f"test/{test_key}"):
        table.add_column(col, justify="right")
    table.add_column("values")  # one column that wraps between values, not inside them
    for r in rows[:SHOWN]:
        values = "  ".join(
            f"{name}={_fmt(r['params'].get(p.key), 3)}".replace(", ", ",")
            for name, p in zip(short, result.space)
        )
        table.add_row(
            str(r["number"]), r["state"], _fmt(r["value"]), _fmt(r["test"].get(test_key)), values
        )
    console = Console()
    console.print(table)
    if result.best is None:
        console.print("no trial completed yet: no best.yaml", highlight=False)
    else:
        b = result.best
        values = ", ".join(f"{k}={_fmt(v)}" for k, v in b["params"].items())
        console.print(
            f"best: trial {b['number']}, {result.monitor} {b['value']:.4f} ({values})",
            highlight=False,
            soft_wrap=True,
        )
    for name, path in result.files.items():
        console.print(f"{name}: {path}", highlight=False, soft_wrap=True)
    return 0
