"""Entry point. Each command lives in its own module exposing ``add_parser(subparsers)``; the parser
it adds sets ``func=run`` where ``run(args) -> int``. BigtrainError becomes one line and exit 2."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

# module names under bigtrain.cli, imported lazily so `bigtrain --help` stays fast
COMMAND_MODULES = [
    "train_cmd",
    "eval_cmd",
    "recipes_cmd",
    "optim_cmd",
    "data_cmd",
    "generate_cmd",
    "report_cmd",
    "launch_cmd",
    "consolidate_cmd",
    "plan_cmd",
    "scaling_cmd",
    "sweep_cmd",
    "tune_cmd",
    "lr_find_cmd",
    "batch_size_find_cmd",
    "explain_cmd",
    "compress_cmd",
    "export_cmd",
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bigtrain",
        description="Train, evaluate and inspect neural networks from YAML recipes.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        # a command module that fails to import is a broken install: let the error surface
        importlib.import_module(f"bigtrain.cli.{name}").add_parser(sub)
    return parser


def _who() -> str:
    """``"rank R: "`` in a worker of a multi-process job (each worker reports its own errors)."""
    world, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "0")
    return f"rank {rank}: " if world.isdigit() and int(world) > 1 else ""


def _is_distributed_failure(e: Exception) -> bool:
    """A collective failed: a peer died, or stopped answering for distributed.timeout_s."""
    dist = sys.modules.get("torch.distributed")  # not imported: not a distributed run
    if dist is None:
        return False
    if isinstance(e, dist.DistError):
        return True
    # gloo reports a lost peer as a RuntimeError raised inside the collective
    return bool(_who()) and isinstance(e, RuntimeError) and "gloo" in str(e)


def main(argv: list[str] | None = None) -> int:
    from bigtrain.errors import BigtrainError, ConfigError, PeerError

    parser = build_parser()
    # key=value overrides may come after options: collect them wherever they are
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = [*args.overrides, *extra]
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return int(args.func(args) or 0)
    except PeerError:
        return 2  # the process that failed first printed why
    except BigtrainError as e:
        if not (isinstance(e, ConfigError) and _who() and os.environ.get("RANK") != "0"):
            # a recipe error is the same on every process: process 0 says it once
            print(f"error: {_who()}{e}", file=sys.stderr)
        return 2
    except Exception as e:
        if not _is_distributed_failure(e):
            raise
        # a peer died or stopped answering within distributed.timeout_s
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        print(
            f"error: {_who()}lost contact with the other processes ({first[:200]}); another "
            "process failed or timed out (distributed.timeout_s)",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
