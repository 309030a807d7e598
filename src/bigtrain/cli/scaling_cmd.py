"""``bigtrain scaling RECIPE --sizes KEY=a,b,c [--steps KEY=x,y] [--target N]``: train a sweep of
small models, fit L(N) = E + A·N^-alpha (and L(N, D) when the length varies too), extrapolate."""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

COUNTS = ("non-embedding", "total")


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Add ``scaling``."""
    p = subparsers.add_parser(
        "scaling",
        help="train models of several sizes and fit a scaling law to their val loss",
        description="Train the recipe once per size (and training length), read each run's "
        "parameter count N and final val loss, fit L(N) = E + A*N^-alpha with 95% confidence "
        "intervals (the 2-parameter A*N^-alpha with fewer than 4 sizes) and, when --steps "
        "varies too, L(N, D) = E + A/N^alpha + B/D^beta. Writes scaling.json and scaling.png "
        "(and the sweep's own files) into the sweep folder; rerunning with the same "
        "--sweep-dir skips the sizes already trained.",
    )
    p.add_argument("recipe", help="recipe name or YAML path")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides for every run")
    p.add_argument(
        "--sizes",
        required=True,
        metavar="KEY=A,B,...",
        help="the model sizes, e.g. model.n_embd=64,96,128,192 or model.hidden=[64],[128]",
    )
    p.add_argument(
        "--steps",
        metavar="KEY=X,Y,...",
        help="training lengths, e.g. trainer.max_steps=500,1000 (adds the L(N, D) fit)",
    )
    p.add_argument("--target", type=float, help="extrapolate the fit to this N (e.g. 1e7)")
    p.add_argument(
        "--count",
        choices=COUNTS,
        default="non-embedding",
        help="which N to fit: non-embedding parameters (Kaplan et al.; default) or all",
    )
    p.add_argument("--sweep-dir", help="sweep folder (default sweeps/<name>-<timestamp>)")
    p.add_argument("--json", action="store_true", help="print scaling.json's content")
    p.set_defaults(func=run)


def _size_axis(flag: str, text: str, need_several: bool):
    from bigtrain.errors import ConfigError
    from bigtrain.tune.sweep import Axis, parse_axis, split_top_level

    if "=" not in text or not text.split("=", 1)[0].strip():
        raise ConfigError(f"{flag} '{text}' must look like KEY=A,B,C (e.g. model.n_embd=64,96,128)")
    axis = parse_axis(text, what=flag)
    if axis is None:
        if need_several:
            raise ConfigError(
                f"{flag} {text} gives a single size; a scaling fit needs at least 2 (e.g. "
                f"{text.split('=', 1)[0]}=64,96,128)"
            )
        axis = Axis(text.split("=", 1)[0].strip(), tuple(split_top_level(text.split("=", 1)[1])))
    from bigtrain.config.loader import parse_override

    for raw in axis.values:
        value = parse_override(f"{axis.key}={raw}")[1]
        numbers = value if isinstance(value, list) and value else [value]
        if not all(_positive_number(v) for v in numbers):
            raise ConfigError(f"{flag} {axis.key}: '{raw}' is not a positive number")
    return axis


def _positive_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) and v > 0


def _measure(run) -> dict[str, Any]:
    """Parameter counts and data per step of a built run (before it trains)."""
    import torch

    from bigtrain.build import data_kind, model_block_size

    model = run.trainer.strategy.unwrap(run.trainer.state.model)
    total = sum(p.numel() for p in model.parameters())
    # Kaplan et al. 2020: N excludes every embedding table (token, position), tied or not
    tables = {
        id(p): p.numel()
        for m in model.modules()
        if isinstance(m, torch.nn.Embedding)
        for p in m.parameters()
    }
    lm = data_kind(run.config) == "language_model"
    per_example = model_block_size(run.config) if lm else 1
    return {
        "parameters": total,
        "non_embedding_parameters": total - sum(tables.values()),
        "per_step": run.config.data.batch_size * per_example,
        "unit": "tokens" if lm else "examples",
    }


def _final_val_loss(sweep_dir, rec) -> float | None:
    from bigtrain.report.figures import series
    from bigtrain.report.html import read_records

    records = read_records(sweep_dir / rec["run_dir"] / "metrics.jsonl", [])
    values = series(records, "val", "loss")[1]
    return values[-1] if values else None


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.markup import escape

    from bigtrain.cli.sweep_cmd import write_outputs
    from bigtrain.errors import ConfigError, TrainingError
    from bigtrain.tune import sweep as sw

    sizes = _size_axis("--sizes", args.sizes, need_several=True)
    steps = _size_axis("--steps", args.steps, need_several=False) if args.steps else None
    if args.target is not None and not _positive_number(args.target):
        raise ConfigError(f"--target must be a positive parameter count, got {args.target}")
    extra_axes, fixed = sw.split_overrides(args.overrides)
    if extra_axes:
        a = extra_axes[0]
        raise ConfigError(
            f"'{a.key}={','.join(a.values)}' lists several values; scaling sweeps only --sizes "
            "and --steps (use `bigtrain sweep` for other grids)"
        )
    axes = [sizes, *([steps] if steps else [])]
    keys = [sizes.key, *([steps.key] if steps else []), *(f.split("=", 1)[0] for f in fixed)]
    twice = next((k for k in keys if keys.count(k) > 1), None)
    if twice:
        raise ConfigError(f"key '{twice}' is given twice; give it once")
    if steps is not None and len(steps.values) == 1:  # one length: an ordinary override
        axes, fixed = [sizes], [*fixed, f"{steps.key}={steps.values[0]}"]
        steps = None
    sweep = sw.plan_sweep(args.recipe, axes, fixed, args.sweep_dir, kind="scaling")
    err = Console(stderr=True, highlight=False, soft_wrap=True)
    err.print(f"{sweep.name}: scaling sweep of {len(sweep.points)} runs -> {sweep.sweep_dir}")
    state = sw.run_sweep(sweep, on_built=_measure, say=lambda m: err.print(escape(m)))
    write_outputs(sweep.sweep_dir, state, f"{sweep.name} scaling sweep")

    rows = []
    for rec in state["points"]:
        extra, loss = rec.get("extra") or {}, None
        if rec.get("status") == "completed" and extra:
            loss = _final_val_loss(sweep.sweep_dir, rec)
        n = extra.get("non_embedding_parameters" if args.count == COUNTS[0] else "parameters")
        d = (rec.get("steps") or 0) * extra.get("per_step", 0)
        rows.append({**rec, "N": n, "D": d, "loss": loss, "unit": extra.get("unit", "examples")})
    usable = [r for r in rows if r["loss"] is not None and r["N"] and r["D"]]
    if len({r["N"] for r in usable}) < 2:
        raise TrainingError(
            f"only {len(usable)} of {len(rows)} runs finished with a val loss (see "
            f"{sweep.sweep_dir / 'sweep.md'}); a fit needs at least 2 sizes"
        )
    result = fit(usable, sizes, steps, args.target, args.count)
    result = {"recipe": sweep.recipe, "sweep_dir": str(sweep.sweep_dir), **result}
    result["runs"] = [_run_row(r, sizes, steps) for r in rows]
    paths = _write(sweep.sweep_dir, result, usable, sweep.name)
    if args.json:
        print(json.dumps(result))
        return 0
    _print(Console(), result, sweep.name, paths)
    return 0


def _run_row(r: dict[str, Any], sizes, steps) -> dict[str, Any]:
    extra = r.get("extra") or {}
    return {
        "name": r["name"],
        "size": r["values"][sizes.key],
        "steps_value": r["values"].get(steps.key) if steps else None,
        "status": r.get("status"),
        "message": r.get("message"),
        "parameters": extra.get("parameters"),
        "non_embedding_parameters": extra.get("non_embedding_parameters"),
        "N": r["N"],
        "D": r["D"] or None,
        "steps": r.get("steps"),
        "final_val_loss": r["loss"],
        "run_dir": r.get("run_dir"),
    }


def _groups(usable: list[dict[str, Any]], steps) -> dict[str, list[dict[str, Any]]]:
    """Runs by training length (one group without --steps), in order of data seen."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(usable, key=lambda r: (r["D"], r["N"])):
        label = f"{steps.key.rsplit('.', 1)[-1]}={r['values'][steps.key]}" if steps else "runs"
        groups.setdefault(label, []).append(r)
    return groups


def fit(usable, sizes, steps, target: float | None, count: str, level: float = 0.95):
    """Fit L(N) on the longest-trained runs (and L(N, D) on all when the length varies)."""
    from bigtrain.errors import BigtrainError
    from bigtrain.plan.scaling import fit_chinchilla, fit_power_law

    groups = _groups(usable, steps)
    longest = list(groups)[-1]
    chosen = groups[longest]
    power = fit_power_law([r["N"] for r in chosen], [r["loss"] for r in chosen])
    out: dict[str, Any] = {
        "count": count,
        "unit": chosen[0]["unit"],
        "level": level,
        "power_law": {**power.to_dict(level), "fitted_on": longest},
        "extrapolation": None,
        "chinchilla": None,
        "chinchilla_note": "",
    }
    out["_fits"] = {"power": power, "groups": groups, "longest": longest}
    if target is not None:
        low, high = power.interval(target, level)
        out["extrapolation"] = {
            "N": target,
            "loss": float(power.predict(target)),
            "low": None if math.isnan(low) else float(low),
            "high": None if math.isnan(high) else float(high),
        }
    if steps is None or len(groups) < 2:
        out["chinchilla_note"] = "training length fixed: no L(N, D) fit (give --steps K=a,b)"
        return out
    try:
        chin = fit_chinchilla(
            [r["N"] for r in usable], [r["D"] for r in usable], [r["loss"] for r in usable]
        )
    except BigtrainError as e:  # too few points: the L(N) fit still stands
        out["chinchilla_note"] = str(e)
        return out
    out["chinchilla"] = chin.to_dict(level)
    out["_fits"]["chinchilla"] = chin
    return out


def _curve(n_min: float, n_max: float):
    import numpy as np

    return np.geomspace(n_min / 1.3, n_max * 1.3, 200)


def _write(sweep_dir, result: dict[str, Any], usable, name: str) -> list:
    """scaling.json, scaling.png and (with a Chinchilla fit) scaling-nd.png."""
    from bigtrain._io import atomic_write_text, json_safe
    from bigtrain.report.sweep import scaling_figure

    fits = result.pop("_fits")
    power, groups, longest = fits["power"], fits["groups"], fits["longest"]
    ns = [r["N"] for r in usable]
    target = result["extrapolation"]
    grid = _curve(min(ns), max([*ns, target["N"] if target else 0]))
    points = {g: ([r["N"] for r in rs], [r["loss"] for r in rs]) for g, rs in groups.items()}
    low, high = power.interval(grid, result["level"])
    has_band = power.cov is not None
    label = f"{'N' if result['count'] == 'total' else 'non-embedding N'}"
    fig = scaling_figure(
        points,
        {longest: (grid, power.predict(grid), low if has_band else None, high if has_band else None)},
        target=None if target is None else (target["N"], target["loss"], target["low"], target["high"]),
        title=f"{name}: L(N) = {power.form}, alpha = {power.estimates()['alpha'].value:.3f}",
        xlabel=f"parameters ({label})",
    )  # fmt: skip
    paths = [sweep_dir / "scaling.json", sweep_dir / "scaling.png"]
    fig.savefig(paths[1], dpi=110)
    chin = fits.get("chinchilla")
    if chin is not None:
        grid = _curve(min(ns), max(ns))
        curves = {}
        for g, rs in groups.items():
            lo, hi = chin.interval(grid, rs[0]["D"], result["level"])
            band = chin.cov is not None
            curves[g] = (
                grid,
                chin.predict(grid, rs[0]["D"]),
                lo if band else None,
                hi if band else None,
            )
        fig = scaling_figure(
            points, curves, title=f"{name}: L(N, D) = {chin.form}", xlabel=f"parameters ({label})"
        )
        paths.append(sweep_dir / "scaling-nd.png")
        fig.savefig(paths[-1], dpi=110)
    atomic_write_text(paths[0], json.dumps(json_safe(result), indent=2))
    return paths


def _ci(est: dict[str, Any]) -> str:
    if est["low"] is None:
        return "n/a (exact fit)"
    return f"{est['low']:.4g} .. {est['high']:.4g}"


def _print(console, result: dict[str, Any], name: str, paths) -> None:
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    pct = f"{result['level']:.0%}"
    runs = Table(title=f"{name}: final val loss by size", title_justify="left", box=box.SIMPLE_HEAD)
    for col in ("size", "N", result["unit"], "val loss", "status"):
        runs.add_column(col, justify="left" if col == "status" else "right")
    for r in result["runs"]:
        size = r["size"] if r["steps_value"] is None else f"{r['size']} x {r['steps_value']}"
        loss = "-" if r["final_val_loss"] is None else f"{r['final_val_loss']:.4f}"
        status = r["status"] if not r["message"] else f"{r['status']}: {r['message']}"
        runs.add_row(escape(str(size)), _int(r["N"]), _int(r["D"]), loss, escape(status))
    console.print(runs)
    for key, title in (("power_law", "L(N)"), ("chinchilla", "L(N, D)")):
        fit = result[key]
        if fit is None:
            continue
        where = f", fitted on {fit['fitted_on']}" if fit.get("fitted_on", "runs") != "runs" else ""
        console.print(
            f"\n[bold]{title} = {fit['form']}[/]{escape(where)}: {fit['dof']} degrees of freedom"
        )
        t = Table(box=box.SIMPLE_HEAD)
        t.add_column("coefficient")
        t.add_column("estimate", justify="right")
        t.add_column(f"{pct} CI", justify="right")
        for coef, est in fit["estimates"].items():
            t.add_row(coef, f"{est['value']:.4g}", _ci(est))
        console.print(t)
        if fit["note"]:
            console.print(f"note: {fit['note']}", highlight=False)
    if result["chinchilla_note"]:
        console.print(f"L(N, D): {result['chinchilla_note']}", highlight=False)
    ex = result["extrapolation"]
    if ex is not None:
        band = "" if ex["low"] is None else f" ({pct} CI {ex['low']:.4f} .. {ex['high']:.4f})"
        console.print(f"extrapolated to N = {ex['N']:.3g}: val loss {ex['loss']:.4f}{band}")
        console.print(
            "(the interval is the fit's statistical error only, assuming the form holds that "
            "far; it does not cover another seed, or a recipe that needs retuning at that size)",
            highlight=False,
        )
    for path in paths:
        console.print(str(path), highlight=False, soft_wrap=True)


def _int(v: Any) -> str:
    return "-" if not isinstance(v, int | float) or not v else f"{v:,.0f}"
