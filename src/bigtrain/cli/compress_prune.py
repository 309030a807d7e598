"""``bigtrain compress prune RUN_DIR --amount 0.5 [--structured] --out OUT_DIR``.

Loads a trained run, prunes it by magnitude (single weights, or whole channels / neurons /
attention heads), optionally fine-tunes it on the run's own training data with the masks held,
and writes a variant run folder that eval/predict/generate read like any other
(docs/pruning.md). The source run is never modified.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "prune",
        help="magnitude-prune a trained run into a new run folder",
        description="Zero the smallest weights (or whole conv channels, hidden neurons and "
        "attention heads with --structured) of a trained run, optionally fine-tune with the "
        "masks held, and write the result as a run folder OUT_DIR (docs/pruning.md).",
    )
    p.add_argument("run_dir", help="a trained run folder (never modified)")
    p.add_argument(
        "--amount", type=float, required=True, help="sparsity in [0, 1): fraction zeroed"
    )
    p.add_argument(
        "--structured",
        action="store_true",
        help="prune whole units (conv channels, hidden neurons, attention heads) per layer",
    )
    p.add_argument(
        "--scope",
        choices=["global", "layer"],
        help="unstructured: rank all layers' weights together (global, default) or prune "
        "--amount of each layer",
    )
    p.add_argument(
        "--exclude",
        action="append",
        default=[],
        metavar="GLOB",
        help="leave modules whose name matches dense (repeatable), e.g. 'head.net.2'",
    )
    p.add_argument(
        "--fine-tune-steps",
        type=int,
        default=0,
        metavar="N",
        help="then train N steps on the run's training data with the masks held",
    )
    p.add_argument("--fine-tune-lr", type=float, help="learning rate of the fine-tune (recipe's)")
    p.add_argument(
        "--make-permanent",
        action="store_true",
        help="fold the masks in; with --structured, rebuild the layers without the pruned "
        "units (a smaller, faster model)",
    )
    p.add_argument("--checkpoint", choices=["best", "latest"], default="best")
    p.add_argument("--out", required=True, help="the new run folder (must not exist or be empty)")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run)


def _check_args(args: argparse.Namespace) -> str:
    """One-line ConfigErrors before anything is loaded; returns the scope."""
    from bigtrain.compress.prune import check_amount
    from bigtrain.errors import ConfigError

    check_amount(args.amount)
    if args.structured and args.scope == "global":
        raise ConfigError(
            "--structured prunes the same fraction of units in each layer; drop --scope global"
        )
    if args.fine_tune_steps < 0:
        raise ConfigError(f"--fine-tune-steps must be >= 0, got {args.fine_tune_steps}")
    if args.fine_tune_lr is not None and args.fine_tune_lr <= 0:
        raise ConfigError(f"--fine-tune-lr must be > 0, got {args.fine_tune_lr}")
    out, src = Path(args.out), Path(args.run_dir)
    if out.exists() and out.resolve() == src.resolve():
        raise ConfigError(f"--out {out} is the source run itself; choose a new folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not empty; choose a new folder")
    return "layer" if args.structured else (args.scope or "global")


def _scalars(metrics: dict) -> dict[str, float]:
    return {k.split("/", 1)[1]: v for k, v in metrics.items() if isinstance(v, float)}


def fine_tune(cfg, model, steps: int, lr: float | None = None, quiet: bool = True):
    """Train ``model`` (masked) ``steps`` steps on the run's training data, as the run's own
    recipe would (optimizer, schedule, loss), without writing anything."""
    from bigtrain.build import BuildWrapper, build

    class Adopt(BuildWrapper):  # the pruned model replaces the freshly built one
        def wrap_model(self, fresh, cfg):
            first = next(fresh.parameters())
            return model.to(first.device)

    trainer = cfg.trainer.model_copy(
        update={"max_steps": steps, "max_epochs": None, "early_stopping_patience": None}
    )
    update = {"trainer": trainer, "prune": None}  # the recipe's schedule must not re-prune
    if lr is not None:
        update["optim"] = cfg.optim.model_copy(update={"lr": lr})
    built = build(
        cfg.model_copy(update=update), run_dir=None, quiet=quiet, extra_wrappers=[Adopt()]
    )
    built.trainer.fit()
    return built.trainer.state.model


def run(args: argparse.Namespace) -> int:
    from bigtrain.build.variant import save_variant_run
    from bigtrain.cli.eval_cmd import load_run, run_config
    from bigtrain.compress.prune import (
        make_permanent,
        masked_names,
        prune_unstructured,
        report_dict,
        sparsity_report,
        total_sparsity,
    )
    from bigtrain.compress.prune_structured import prune_structured, remove_pruned_units

    scope = _check_args(args)
    cfg = run_config(args.run_dir)
    built, _ = load_run(args.run_dir, args.checkpoint, cfg)
    trainer = built.trainer
    batches, split = built.test_batches, "test"
    if batches is None:
        batches, split = trainer.state.val_data, "val"

    def measure() -> dict[str, float]:
        return _scalars(trainer.evaluate(batches, split=split)) if batches is not None else {}

    model = trainer.state.model
    n_before = sum(p.numel() for p in model.parameters())
    before = measure()
    exclude = tuple(args.exclude)
    if args.structured:
        kept = prune_structured(model, args.amount, exclude)
    else:
        kept = None
        prune_unstructured(model, args.amount, scope, exclude)
    pruned = measure()
    tuned = None
    if args.fine_tune_steps:
        model = fine_tune(cfg, model, args.fine_tune_steps, args.fine_tune_lr)
        trainer.state.model = model
        tuned = measure()
    steps = []
    if args.make_permanent:
        if args.structured:
            model, step = remove_pruned_units(model)
            steps.append(step)
        make_permanent(model)
        trainer.state.model = model
    steps.append({"kind": "prune_masks", "masked": masked_names(model)})
    final = measure()
    rows = sparsity_report(model)
    info = {
        "amount": args.amount,
        "structured": args.structured,
        "scope": scope,
        "exclude": list(exclude),
        "make_permanent": args.make_permanent,
        "fine_tune_steps": args.fine_tune_steps,
        "split": split,
        "before": before,
        "pruned": pruned,
        "fine_tuned": tuned,
        "final": final,
        "parameters_before": n_before,
        "parameters_after": sum(p.numel() for p in model.parameters()),
        **({"units_kept": kept} if kept is not None else {}),
        **report_dict(model),
    }
    summary = {
        "name": cfg.name,
        "parameters": info["parameters_after"],
        "test": final,
        "test_split": split,
        "pruning": info,
    }
    out = save_variant_run(args.run_dir, args.out, model, steps, summary)
    if args.json:
        print(json.dumps({"out": str(out), **info}))
        return 0
    _print(info, rows, total_sparsity(rows), out)
    return 0


def _print(info: dict, rows, sparsity: float, out: Path) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    table = Table(title=f"sparsity per layer (weights): {sparsity:.1%} overall")
    for col in ("layer", "params", "zeros", "sparsity"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for name, params, zeros, s in rows:
        table.add_row(name, f"{params:,}", f"{zeros:,}", f"{s:.1%}")
    console.print(table)
    metrics = Table(title=f"{info['split']} metrics")
    metrics.add_column("metric")
    stages = [("before", "before"), ("pruned", "pruned"), ("fine_tuned", "fine-tuned")]
    stages = [(k, label) for k, label in stages if info.get(k)]
    for _, label in stages:
        metrics.add_column(label, justify="right")
    for name in info["before"]:
        metrics.add_row(name, *(f"{info[k].get(name, float('nan')):.4f}" for k, _ in stages))
    console.print(metrics)
    console.print(
        f"parameters {info['parameters_before']:,} -> {info['parameters_after']:,}; "
        f"variant run folder: {out}"
    )
