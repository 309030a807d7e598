"""Entry point. Each command lives in its own module exposing ``add_parser(subparsers)``; the parser
it adds sets ``func=run`` where ``run(args) -> int``. BigtrainError becomes one line and exit 2."""

from __future__ import annotations

import argparse
import importlib
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


def main(argv: list[str] | None = None) -> int:
    from bigtrain.errors import BigtrainError

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
    except BigtrainError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
