"""``bigtrain sweep RECIPE key=a,b,c [key=v ...]``: a grid of real runs, ranked in one table."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sweep``."""
    p = subparsers.add_parser(
        "sweep",
        help="train every combination of key=a,b,c overrides and compare them",
        description="Train the recipe once per point of the grid: an override whose value has "
        "commas (optim.name=sgd,adam) is a list, and the grid is the product of the lists; "
        "other overrides apply to every point. Commas inside brackets stay in one value "
        "(model.hidden=[64,64],[128]). Writes sweep.json, sweep.csv, sweep.md and sweep.png "
        "into the sweep folder and each run into its runs/ folder. Running the same command "
        "with the same --sweep-dir again skips the points that completed.",
    )
    p.add_argument("recipe", help="recipe name or YAML path")
    p.add_argument("overrides", nargs="*", help="key=a,b,c to sweep, key=value to fix")
    p.add_argument(
        "--sweep-dir", help="sweep folder (default sweeps/<name>-<timestamp>); reuse it to resume"
    )
    p.add_argument("--json", action="store_true", help="print sweep.json's content as JSON")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from rich.console import Console
    from rich.markup import escape

    from bigtrain.tune import sweep as sw

    axes, fixed = sw.split_overrides(args.overrides)
    sweep = sw.plan_sweep(args.recipe, axes, fixed, args.sweep_dir)
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print(
        f"[bold]{escape(sweep.name)}[/]: {len(sweep.points)} runs "
        f"({' x '.join(f'{len(a.values)} {a.key}' for a in axes)}) -> {escape(str(sweep.sweep_dir))}"
    )
    state = sw.run_sweep(sweep, say=lambda message: err.print(escape(message)))
    outputs = write_outputs(sweep.sweep_dir, state, f"{sweep.name} sweep")
    if args.json:
        print(json.dumps(state))
        return 0
    console = Console()
    print_table(console, state, f"{sweep.name}: {len(state['points'])} runs")
    for path in outputs:
        console.print(f"{path}", highlight=False, soft_wrap=True)
    return 0


def write_outputs(sweep_dir: Path, state: dict[str, Any], title: str) -> list[Path]:
    """sweep.csv, sweep.md and (when any point logged its metric) sweep.png."""
    from bigtrain.report.sweep import sweep_figure
    from bigtrain.tune import sweep as sw

    paths = list(write_tables(sweep_dir, state))
    monitor = next((p["monitor"] for p in sw.ranked(state) if p.get("monitor")), "val/loss")
    keys = [a["key"] for a in state["axes"]]
    groups = {
        _label(p): (p["values"][keys[0]], p["values"][keys[1]] if len(keys) > 1 else None)
        for p in state["points"]
    }
    fig = sweep_figure(curves(state, sweep_dir), monitor, title, groups)
    if fig is not None:
        paths.append(sweep_dir / "sweep.png")
        fig.savefig(paths[-1], dpi=110)
    return [sweep_dir / sw.SWEEP_FILE, *paths]


def comparison(state: dict[str, Any]) -> tuple[str, list[str], list[list[str]]]:
    """The comparison table as text: (what it ranks by, header, rows), best point first."""
    from bigtrain.tune import sweep as sw

    points = sw.ranked(state)
    monitor = next((p["monitor"] for p in points if p.get("monitor")), "val metric")
    key = monitor.split("/", 1)[-1]
    test_split = next((p["test_split"] for p in points if p.get("test_split")), "test")
    keys = [a["key"] for a in state["axes"]]
    header = ["rank", *sw.short_names(keys), "best", "at step", "final", test_split, "steps"]
    header += ["time s", "status"]
    rows = []
    for rank, p in enumerate(points, start=1):
        done = p.get("status") == "completed"
        status = p.get("status", "")
        if p.get("message"):
            status = (
                short_message(p["message"]) if done else f"{status}: {short_message(p['message'])}"
            )
        rows.append(
            [
                str(rank) if done else "-",
                *(p["values"][k] for k in keys),
                _num(p.get("best")), _num(p.get("best_step"), "d"), _num(p.get("final")),
                _num(p.get("test")), _num(p.get("steps"), "d"), _num(p.get("wall_time_s"), ".1f"),
                status,
            ]
        )  # fmt: skip
    mode = next((p["mode"] for p in points if p.get("mode")), "min")
    ranking = f"{monitor} ({'higher' if mode == 'max' else 'lower'} is better; {test_split}: {key})"
    return ranking, header, rows


def best_per_value(state: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """With two or more swept keys: the best point for each value of the first (the best LR
    of each optimizer in a bake-off), best first. None with a single key."""
    from bigtrain.tune import sweep as sw

    keys = [a["key"] for a in state["axes"]]
    if len(keys) < 2:
        return None
    names = sw.short_names(keys)
    seen, rows = set(), []
    for p in sw.ranked(state):
        first = p["values"][keys[0]]
        if p.get("status") != "completed" or first in seen:
            continue
        seen.add(first)
        others = " ".join(f"{n}={p['values'][k]}" for n, k in zip(names[1:], keys[1:]))
        rows.append([first, others, _num(p.get("best")), _num(p.get("final")), _num(p.get("test"))])
    return [names[0], "best setting", "best", "final", "test"], rows


def short_message(message: str) -> str:
    """The first clause of an error (``loss became nan at step 6``): the table stays narrow."""
    import re

    return re.split(r"[:;] ", message, maxsplit=1)[0][:60]


def _num(v: Any, spec: str = ".4f") -> str:
    return "-" if not isinstance(v, int | float) else format(v, spec)


def write_tables(sweep_dir: Path, state: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``sweep.csv`` (raw numbers, for pandas) and ``sweep.md`` (the ranked table)."""
    import csv
    import io

    from bigtrain._io import atomic_write_text
    from bigtrain.tune import sweep as sw

    keys = [a["key"] for a in state["axes"]]
    cols = ["rank", *keys, "status", "monitor", "best", "best_step", "final", "test", "steps"]
    cols += ["wall_time_s", "parameters", "run_dir", "message"]
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(cols)
    for rank, p in enumerate(sw.ranked(state), start=1):
        row = {**p, **p["values"], "rank": rank if p.get("status") == "completed" else ""}
        writer.writerow(["" if row.get(c) is None else row.get(c) for c in cols])
    csv_path = atomic_write_text(sweep_dir / "sweep.csv", buf.getvalue())
    ranking, header, rows = comparison(state)
    lines = [f"Ranked by best {ranking}.", ""]
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |" for r in rows]
    per = best_per_value(state)
    if per is not None:
        lines += ["", f"Best point per {per[0][0]}:", "", "| " + " | ".join(per[0]) + " |"]
        lines += ["|" + "|".join("---" for _ in per[0]) + "|"]
        lines += ["| " + " | ".join(r) + " |" for r in per[1]]
    md_path = atomic_write_text(sweep_dir / "sweep.md", "\n".join(lines) + "\n")
    return csv_path, md_path


def curves(state: dict[str, Any], sweep_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Each point's ``metrics.jsonl`` records, keyed by its label (ranked order)."""
    from bigtrain.report.html import read_records
    from bigtrain.tune import sweep as sw

    out = {}
    for p in sw.ranked(state):
        path = sweep_dir / p.get("run_dir", f"runs/{p['name']}") / "metrics.jsonl"
        if path.is_file():
            out[_label(p)] = read_records(path, [])
    return out


def _label(p: dict[str, Any]) -> str:
    failed = "" if p.get("status") == "completed" else f" ({p.get('status')})"
    return (p.get("label") or p["name"]) + failed


def print_table(console, state: dict[str, Any], title: str) -> None:
    """The ranked comparison table; the winner in bold, failed points dimmed and explained."""
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    ranking, header, rows = comparison(state)
    # no vertical rules: a bake-off table fits an 80-column terminal
    table = Table(
        title=f"{title}, ranked by best {ranking.split(' (')[0]}",
        caption=f"({ranking.split(' (', 1)[1]}" if " (" in ranking else None,
        title_justify="left",
        caption_justify="left",
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
    )
    for j, col in enumerate(header):
        if col == "status":  # the one column that folds: the numbers stay whole
            table.add_column(col, justify="left", overflow="fold", ratio=1)
        else:
            width = max(len(col), *(len(r[j]) for r in rows)) if rows else len(col)
            table.add_column(escape(col), justify="right", no_wrap=True, min_width=width)
    for i, row in enumerate(rows):
        style = "bold" if i == 0 and row[0] == "1" else ("dim" if row[0] == "-" else None)
        table.add_row(*map(escape, row), style=style)
    console.print(table)
    per = best_per_value(state)
    if per is not None and per[1]:
        best = Table(title=f"best point per {per[0][0]}", title_justify="left", box=box.SIMPLE_HEAD)
        for col in per[0]:
            best.add_column(escape(col), justify="right" if col != "best setting" else "left")
        for row in per[1]:
            best.add_row(*map(escape, row))
        console.print(best)
    for p in state["points"]:
        if p.get("status") not in ("completed", "pending") and p.get("message"):
            console.print(escape(f"{p.get('label')}: {p['message']}"), highlight=False)
