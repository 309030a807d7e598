"""``bigtrain plan RECIPE``: parameters, FLOPs, memory, time and cost before training."""

from __future__ import annotations

import argparse
import json
import math

from bigtrain.errors import ConfigError

HARDWARE_HELP = "cpu (measured here), a100-80gb, h100-80gb, h200, or your own YAML file"


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plan",
        help="parameters, FLOPs, memory, time and cost of a recipe, before training",
        description="Plan a run without training or allocating the model (it is built on the "
        "meta device): exact parameters per module type, FLOPs per step, peak memory per "
        "device for single/DDP/FSDP with and without activation checkpointing, step and run "
        "time from peak FLOP/s x MFU, cost, and the compute-optimal size for a budget "
        "(docs/planning.md).",
    )
    p.add_argument("recipe", help="recipe name or YAML path")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    p.add_argument("--hardware", default="cpu", help=f"{HARDWARE_HELP} (default cpu)")
    p.add_argument("--gpus", type=_positive_int, default=1, help="devices per node (default 1)")
    p.add_argument("--nodes", type=_positive_int, default=1, help="nodes (default 1)")
    p.add_argument(
        "--strategy",
        choices=["single", "ddp", "fsdp"],
        help="default: the recipe's distributed.strategy, or ddp on several devices",
    )
    p.add_argument(
        "--precision",
        choices=["fp32", "bf16", "fp16"],
        help="default: the recipe's trainer.precision (auto is bf16 on the GPUs in the table)",
    )
    p.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="recompute each block in backward (default: the recipe's setting)",
    )
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-flops", type=_positive_float, help="a compute budget, FLOPs")
    budget.add_argument(
        "--budget-hours", type=_positive_float, help="a compute budget, hours on these devices"
    )
    p.add_argument("--price-per-hour", type=_positive_float, help="price of one device-hour")
    p.add_argument("--mfu", type=_positive_float, help="model FLOPs utilisation, 0..1 "
                   "(default: the hardware's stated default, or measured with --calibrate)")  # fmt: skip
    p.add_argument(
        "--calibrate",
        action="store_true",
        help="measure the MFU here with a few real steps of the recipe (--hardware cpu)",
    )
    p.add_argument("--json", action="store_true", help="print the plan as one JSON object")
    p.set_defaults(func=run)


def _settings(args: argparse.Namespace, described):
    from bigtrain.plan.hardware import get_hardware
    from bigtrain.plan.planner import Settings

    cfg = described.config
    from bigtrain.optim.optimizers import OPTIMIZERS

    OPTIMIZERS.get(cfg.optim.name)  # an unknown name: the error training would give
    devices = args.gpus * args.nodes
    on_gpu = args.hardware != "cpu"
    precision = args.precision
    if precision is None:
        wanted = cfg.trainer.precision
        precision = ("bf16" if on_gpu else described.precision) if wanted == "auto" else wanted
    strategy = args.strategy
    if strategy is None:
        strategy = described.strategy if described.strategy != "single" else "single"
        if devices > 1 and strategy == "single":
            strategy = "ddp"
    if args.calibrate and (on_gpu or devices > 1):
        raise ConfigError(
            "--calibrate measures this machine with one process: use it with --hardware cpu "
            "and one device"
        )
    if args.mfu is not None and args.mfu > 1:
        raise ConfigError(f"--mfu is a fraction of the peak, at most 1; got {args.mfu}")
    if args.calibrate and args.mfu is not None:
        raise ConfigError("give either --mfu or --calibrate, not both")
    hardware = get_hardware(args.hardware, precision)
    return Settings(
        hardware=hardware,
        devices_per_node=args.gpus,
        nodes=args.nodes,
        strategy=strategy,
        precision=precision,
        activation_checkpointing=args.activation_checkpointing
        or described.activation_checkpointing,
        optimizer=cfg.optim.name,
        momentum=cfg.optim.momentum,
        mfu=args.mfu,
        mfu_source="given" if args.mfu is not None else "default",
        price_per_hour=args.price_per_hour,
        budget_flops=args.budget_flops,
        budget_hours=args.budget_hours,
    )


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from bigtrain.build.describe import calibrate, describe_run
    from bigtrain.config import load_recipe
    from bigtrain.plan.planner import make_plan
    from bigtrain.plan.timing import calibrated_mfu

    cfg = load_recipe(args.recipe, args.overrides)
    described = describe_run(cfg)
    settings = _settings(args, described)
    plan = make_plan(described, settings)
    if args.calibrate:
        measured = calibrate(cfg)
        seconds = measured.step_seconds
        peak = settings.hardware.peak(settings.precision)
        settings = dataclasses.replace(
            settings,
            mfu=calibrated_mfu(plan.flops_per_step, seconds, peak),
            mfu_source=f"measured: {seconds * 1e3:.3g} ms/step, median of {measured.steps_timed}",
            eval_seconds=measured.eval_seconds,
        )
        plan = make_plan(described, settings, trace=plan.trace)
    if args.json:
        from bigtrain.cli.plan_view import plan_json

        print(json.dumps(plan_json(plan, cfg.name), indent=2))
    else:
        from bigtrain.cli.plan_view import print_plan

        print_plan(plan, cfg.name, cfg.model.name)
    return 0
