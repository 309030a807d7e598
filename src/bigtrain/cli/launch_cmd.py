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
    from bigtrain.distributed.launch import launch, plan_launch

    plan = plan_launch(
        args.nproc_per_node,
        args.nnodes,
        args.node_rank,
        args.rdzv_endpoint,
        args.max_restarts,
        args.command,
        rdzv_id=args.rdzv_id,
        monitor_interval=args.monitor_interval,
    )
    return launch(plan)
