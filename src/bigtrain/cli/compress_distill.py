"""``bigtrain compress distill --teacher RUN_DIR --student RECIPE [key=value ...]``.

Trains the student recipe with its ``distill:`` section filled in from the options, through
``bigtrain train``'s own machinery: the result is a normal run folder (docs/distillation.md).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "distill",
        help="train a smaller student on a trained teacher's soft targets",
        description="Train the --student recipe with knowledge distillation from the --teacher "
        "run folder: loss = alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * label loss. "
        "The result is a normal run folder (bigtrain eval/predict/generate read it).",
    )
    p.add_argument("--teacher", required=True, help="a trained run folder (its best checkpoint)")
    p.add_argument("--student", required=True, help="recipe name or YAML path of the student")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the student recipe")
    p.add_argument("--temperature", type=float, help="softening temperature T > 0 (default 2)")
    p.add_argument("--alpha", type=float, help="weight of the soft-target loss in [0, 1] (0.5)")
    p.add_argument("--out", help="run folder of the student (default runs/<name>-<timestamp>)")
    p.add_argument("--quiet", action="store_true", help="no progress output; print the summary")
    p.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    p.set_defaults(func=run)


def distill_overrides(args: argparse.Namespace) -> list[str]:
    """The student's overrides plus the ``distill.*`` ones the options stand for.

    Values are written as JSON (valid YAML), so any path or number parses back as given.
    """
    from bigtrain.errors import CheckpointError, ConfigError

    teacher = Path(args.teacher)
    if not teacher.is_dir():
        raise CheckpointError(f"--teacher {teacher} does not exist (train the teacher first)")
    if args.temperature is not None and not (
        math.isfinite(args.temperature) and args.temperature > 0
    ):
        raise ConfigError(f"--temperature must be > 0, got {args.temperature}")
    if args.alpha is not None and not 0.0 <= args.alpha <= 1.0:
        raise ConfigError(f"--alpha must be in [0, 1], got {args.alpha}")
    # an absolute path: the run folder's config.yaml stays valid from any working directory
    extra = [f"distill.teacher={json.dumps(str(teacher.resolve()))}", "distill.teacher_model=null"]
    if args.temperature is not None:
        extra.append(f"distill.temperature={json.dumps(args.temperature)}")
    if args.alpha is not None:
        extra.append(f"distill.alpha={json.dumps(args.alpha)}")
    return [*args.overrides, *extra]


def run(args: argparse.Namespace) -> int:
    from bigtrain.cli.train_cmd import run_train

    train_args = argparse.Namespace(
        recipe=args.student,
        overrides=distill_overrides(args),
        run_dir=args.out,
        resume=False,
        quiet=args.quiet,
        json=args.json,
    )
    return run_train(train_args)
