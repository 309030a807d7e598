"""``bigtrain compress merge``: being written (issue 9)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("merge", help="(being written)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bigtrain.errors import ConfigError

    raise ConfigError("bigtrain compress merge is being written")
