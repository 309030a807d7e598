"""``bigtrain compress distill``: being written (issue 9)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("distill", help="(being written)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bigtrain.errors import ConfigError

    raise ConfigError("bigtrain compress distill is being written")
