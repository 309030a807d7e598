"""`bigtrain explain RUN_DIR --method ...` (attributions through Captum)."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser("explain", help="attributions of a trained model's predictions")
    e.add_argument("run_dir")
