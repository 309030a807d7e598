"""`bigtrain consolidate RUN_DIR|CHECKPOINT`: one weights file from a sharded (FSDP) checkpoint."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "consolidate",
        help="make a sharded (FSDP) checkpoint's weights one safetensors file",
        description="Read every shard of a checkpoint written with distributed.strategy=fsdp "
        "(a run folder means its latest checkpoint) and write model.safetensors into it, so "
        "`eval --checkpoint latest` and `generate` read it. One process; any world size.",
    )
    p.add_argument("path", help="run folder or checkpoints/step-N folder")
    p.set_defaults(func=run_consolidate)


def run_consolidate(args: argparse.Namespace) -> int:
    from bigtrain.build import build
    from bigtrain.callbacks.checkpointing import read_pointer
    from bigtrain.cli.eval_cmd import run_config
    from bigtrain.distributed.consolidate import consolidate
    from bigtrain.errors import CheckpointError

    path = Path(args.path)
    if (path / "config.yaml").is_file():
        run_dir, checkpoint = path, read_pointer(path / "checkpoints" / "latest")
        if checkpoint is None:
            raise CheckpointError(f"{run_dir} has no checkpoint")
    else:
        run_dir, checkpoint = path.parent.parent, path
    built = build(run_config(run_dir), run_dir=None, quiet=True)
    out = consolidate(checkpoint, built.model)
    print(out)
    return 0
