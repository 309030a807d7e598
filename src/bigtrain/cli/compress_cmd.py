"""``bigtrain compress distill|prune|quantize|report``: each subcommand lives in its own module
(``compress_<name>.py``) exposing ``add_parser(subparsers)``, like the top-level commands."""

from __future__ import annotations

import argparse
import importlib

SUBCOMMANDS = [
    "compress_distill",
    "compress_prune",
    "compress_quantize",
    "compress_report",
    "compress_merge",
]


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compress",
        help="distil, prune, quantize or merge adapters of a trained model; compare the variants",
        description="Make a trained model smaller or faster; each variant is a run folder that "
        "eval/predict/generate read like any other (docs/compression.md).",
    )
    inner = p.add_subparsers(dest="compress_command", metavar="SUBCOMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"bigtrain.cli.{name}").add_parser(inner)

    def show_help(args: argparse.Namespace) -> int:  # `bigtrain compress` without a subcommand
        p.print_help()
        return 0

    p.set_defaults(func=show_help)
