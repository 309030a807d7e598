"""`bigtrain report RUN_DIR`: (re)write a run folder's report.html, e.g. after an interrupted run."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="write report.html for a run folder",
        description="Render the run's metrics.jsonl, summary.json and config.yaml "
        "into a self-contained report.html (figures embedded, readable offline).",
    )
    p.add_argument("run_dir")
    p.add_argument("--out", help="where to write the page (default RUN_DIR/report.html)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from bigtrain.report import write_report

    print(write_report(args.run_dir, args.out))
    return 0
