"""`bigtrain launch [--nproc-per-node N ...] train RECIPE ...`: a job on N processes, M machines."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "launch",
        help="train on several processes or machines (torchrun)",
        description="Run `train RECIPE [key=value ...] [--run-dir D]` on --nproc-per-node "
        "processes on each of --nnodes machines through torch.distributed.run (torchrun). "
        "The strategy is the recipe's distributed.strategy (auto: ddp). data.batch_size is the "
        "global batch. With --max-restarts K, a failed group restarts and continues from the "
        "last checkpoint. See docs/distributed.md.",
    )
    p.add_argument("--nproc-per-node", type=int, default=1, help="processes on this machine")
    p.add_argument("--nnodes", type=int, default=1, help="machines in the job (default 1)")
    p.add_argument("--node-rank", type=int, default=0, help="this machine's index (default 0)")
    p.add_argument(
        "--rdzv-endpoint",
        default=None,
        help="HOST:PORT where the machines meet (node 0); default: a free local port",
    )
    p.add_argument("--rdzv-id", default="bigtrain", help="job id shared by its machines")
    p.add_argument(
        "--max-restarts", type=int, default=0, help="restarts of a failed group (default 0)"
    )
    p.add_argument(
        "--monitor-interval",
        type=float,
        default=1.0,
        help="seconds between torchrun's checks on the workers",
    )
    p.add_argument("command", nargs=argparse.REMAINDER, help="train RECIPE [key=value ...]")
    p.set_defaults(func=run_launch)


def run_launch(args: argparse.Namespace) -> int:
    from bigtrain.distributed.launch import check_job, launch, plan_launch
    from bigtrain.errors import ConfigError

    check_job(args.nproc_per_node, args.nnodes, args.node_rank, args.max_restarts)
    command = args.command
    if not command or command[0] != "train":
        shown = command[0] if command else "nothing"
        raise ConfigError(f"bigtrain launch runs `train RECIPE ...`, got {shown!r}")
    run_dir, name = check_train_command(command, args.nproc_per_node * args.nnodes)
    worker_args = list(command)
    if run_dir is None:
        if args.nnodes > 1:
            raise ConfigError(
                "a multi-node run needs --run-dir on a folder every node shares (checkpoints "
                "are read back by all of them)"
            )
        from bigtrain.run import default_run_dir

        # fixed now, so that a group restarted by torchrun resumes from the same folder
        worker_args += ["--run-dir", str(default_run_dir(name))]
    plan = plan_launch(
        args.nproc_per_node,
        args.nnodes,
        args.node_rank,
        args.rdzv_endpoint,
        args.max_restarts,
        worker_args,
        rdzv_id=args.rdzv_id,
        monitor_interval=args.monitor_interval,
    )
    return launch(plan)


def check_train_command(command: list[str], world_size: int) -> tuple[str | None, str]:
    """Parse and validate the workers' ``train`` arguments as every worker will; returns
    (its --run-dir or None, the run's name). Recipe errors fail here, once, before any worker
    starts."""
    from bigtrain.cli.main import build_parser
    from bigtrain.cli.train_cmd import _split_overrides
    from bigtrain.config import load_recipe
    from bigtrain.errors import ConfigError

    args, extra = build_parser().parse_known_args(command)
    overrides = [*args.overrides, *extra]
    bad = [e for e in extra if "=" not in e or e.startswith("-")]
    if bad:
        raise ConfigError(f"unrecognized arguments for train: {' '.join(bad)}")
    recipe, overrides = _split_overrides(args.recipe, overrides, args.resume)
    if recipe is None:  # --resume with the folder's own recipe: the workers read it
        if args.run_dir is None:
            raise ConfigError("train --resume needs --run-dir")
        return args.run_dir, "run"
    cfg = load_recipe(recipe, overrides)
    if cfg.distributed.strategy == "single" and world_size > 1:
        raise ConfigError(
            f"distributed.strategy is 'single' but the launch starts {world_size} processes; "
            "use ddp or fsdp (or auto)"
        )
    batch = cfg.data.batch_size
    if world_size > 1 and isinstance(batch, int) and batch % world_size:
        raise ConfigError(
            f"data.batch_size {batch} is not a multiple of the {world_size} processes; use a "
            f"multiple of {world_size} (the batch size is the global batch, split across processes)"
        )
    return args.run_dir, cfg.name
