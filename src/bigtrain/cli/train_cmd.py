"""`bigtrain train [RECIPE] [key=value ...]` and `bigtrain cv RECIPE --folds K`."""

from __future__ import annotations

import argparse
import json
import math
import statistics

DEFAULT_RECIPE = "digits-mlp"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train a model from a recipe",
        description="Train from a shipped recipe name or a YAML path, with dotted overrides "
        "(optim.lr=3e-4 trainer.max_epochs=5). Without a recipe, trains the default "
        f"'{DEFAULT_RECIPE}'. Writes a run folder with config, metrics, checkpoints, "
        "summary.json and report.html.",
    )
    p.add_argument(
        "recipe",
        nargs="?",
        default=None,
        help=f"recipe name or YAML path (default {DEFAULT_RECIPE}; with --resume, the run "
        "folder's own recipe)",
    )
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--run-dir", help="run folder (default runs/<name>-<timestamp>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --run-dir")
    p.add_argument("--quiet", action="store_true", help="no progress output; print the summary")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run_train)

    c = sub.add_parser(
        "cv",
        help="k-fold cross-validation of a recipe",
        description="Train the recipe once per fold (the test split stays held out) and print "
        "mean ± std of each validation metric.",
    )
    c.add_argument("recipe", help="recipe name or YAML path")
    c.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    c.add_argument("--folds", type=int, default=5, help="number of folds (default 5)")
    c.add_argument("--json", action="store_true", help="print the results as one JSON object")
    c.set_defaults(func=run_cv)


def _split_overrides(
    recipe: str | None, overrides: list[str], resume: bool
) -> tuple[str | None, list[str]]:
    # `bigtrain train optim.lr=1e-3` means: the default recipe with an override; without a
    # recipe, --resume continues the run folder's own recipe
    if recipe is not None and "=" in recipe:
        recipe, overrides = None, [recipe, *overrides]
    if recipe is None and not resume:
        recipe = DEFAULT_RECIPE
    return recipe, overrides


def run_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from bigtrain.distributed import destroy_process_group
    from bigtrain.run import build_run, restarted_with_checkpoint

    # a worker restarted by torchrun (--max-restarts) continues from the last checkpoint
    resume = args.resume or restarted_with_checkpoint(args.run_dir)
    recipe, overrides = _split_overrides(args.recipe, args.overrides, resume)
    quiet = args.quiet or args.json
    console = Console(stderr=True)
    try:
        run = build_run(recipe, overrides, run_dir=args.run_dir, resume=resume, quiet=quiet)
        main = run.trainer.strategy.is_main
        if not quiet and main:
            strategy = run.trainer.strategy
            params = sum(p.numel() for p in run.trainer.state.model.parameters())
            where = f" on {strategy.world_size} processes" if strategy.world_size > 1 else ""
            console.print(
                f"[bold]{run.config.name}[/]: {params:,} parameters, "
                f"{run.trainer.state.max_steps} steps{where} -> {run.run_dir}"
            )
        summary = run.fit()
    finally:
        destroy_process_group()
    if not main:
        return 0  # the main process prints the summary
    if args.json:
        print(json.dumps(summary))
        return 0
    print_summary(summary, run.run_dir, Console())
    return 0


def print_summary(summary: dict, run_dir, console) -> None:
    from rich.table import Table

    table = Table(title=f"{summary['name']}: {summary['status']}", show_header=True)
    table.add_column(f"{summary.get('test_split') or 'test'} metric")
    table.add_column("value", justify="right")
    for k, v in summary.get("test", {}).items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    for k, v in summary.get("notes", {}).items():
        table.add_row(k, f"{v}")
    console.print(table)
    console.print(
        f"{summary['steps']} steps in {summary['wall_time_s']:.1f} s; run folder: {run_dir}\n"
        f"report: {summary.get('report', '(not written: ' + summary.get('report_error', '') + ')')}"
    )


def run_cv(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    from bigtrain.build import build
    from bigtrain.config import load_recipe
    from bigtrain.errors import ConfigError

    if args.folds < 2:
        raise ConfigError(f"--folds must be at least 2, got {args.folds}")
    cfg = load_recipe(args.recipe, args.overrides)
    cfg = cfg.model_copy(update={"trainer": cfg.trainer.model_copy(update={"progress": False})})
    console = Console(stderr=True)
    per_fold: list[dict[str, float]] = []
    for k in range(args.folds):
        built = build(cfg, run_dir=None, fold=(k, args.folds), quiet=True)
        built.trainer.fit()
        metrics = built.trainer.evaluate(built.trainer.state.val_data, split="val")
        scalars = {k2.split("/", 1)[1]: v for k2, v in metrics.items() if isinstance(v, float)}
        per_fold.append(scalars)
        if not args.json:
            shown = "  ".join(f"{n} {v:.4f}" for n, v in scalars.items())
            console.print(f"fold {k + 1}/{args.folds}: {shown}")
    names = list(per_fold[0])
    result = {
        n: {
            "mean": statistics.fmean(f[n] for f in per_fold),
            "std": statistics.stdev(f[n] for f in per_fold),
            "folds": [f[n] for f in per_fold],
        }
        for n in names
    }
    if args.json:
        print(json.dumps({"recipe": cfg.name, "folds": args.folds, "metrics": result}))
        return 0
    table = Table(title=f"{cfg.name}: {args.folds}-fold cross-validation (validation folds)")
    table.add_column("metric")
    table.add_column("mean ± std", justify="right")
    for n, r in result.items():
        if not math.isnan(r["mean"]):
            table.add_row(n, f"{r['mean']:.4f} ± {r['std']:.4f}")
    Console().print(table)
    return 0
