"""Grid sweeps: ``key=a,b,c`` overrides -> the cartesian product of runs, in one sweep folder.

An override whose value has a comma at the top level is a list of values to sweep; commas inside
a YAML flow list or mapping (``model.hidden=[64,64]``) or inside quotes do not split, so
``model.hidden=[64],[64,64]`` sweeps two values. Each value is then parsed like any override
(``parse_override``: YAML), and every point is validated through the recipe loader before the
first run starts, so a typo is one "did you mean" line, not a failed sweep.

A sweep folder::

    sweep.json          the grid and, per point: overrides, run folder, status, results
    runs/<point>/       each point's ordinary run folder

plus what `bigtrain sweep` (cli/sweep_cmd.py) writes from sweep.json: sweep.csv and sweep.md
(the table ranked by the monitored metric) and sweep.png (report.sweep).

Running the same sweep into the same folder again skips the points that completed (and
continues an interrupted one from its checkpoint); a folder holding another sweep is refused.
"""

from __future__ import annotations

import fcntl
import hashlib
import itertools
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bigtrain._io import atomic_write_text, json_safe
from bigtrain.config import dump_config, load_recipe
from bigtrain.config.loader import parse_override
from bigtrain.errors import BigtrainError, CheckpointError, ConfigError

SWEEP_FILE = "sweep.json"
_FORMAT = 1
_OPEN, _CLOSE = "[{(", "]})"
_DONE = ("completed", "stopped")  # a summary status starting with these is a finished point


@dataclass(frozen=True)
class Axis:
    """One swept key and its values, as the user wrote them (``("1e-3", "3e-3")``)."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Point:
    """One grid point: a short folder-safe name and the ``key=value`` overrides it adds."""

    name: str
    values: dict[str, str]
    label: str  # for tables and legends: ``name=adam lr=1e-3``

    @property
    def overrides(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.values.items()]


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets, braces and quotes: ``"[1,2],3"`` -> ``["[1,2]", "3"]``."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(0, depth - 1)
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts]


def parse_axis(text: str, what: str = "override") -> Axis | None:
    """``"optim.lr=1e-3,3e-3"`` -> Axis; None when the value has no top-level comma (fixed).

    Raises:
        ConfigError: an empty value (``64,,96``), the same value twice, or a malformed key.
    """
    keys, _ = parse_override(text)  # "key=value" shape and a non-empty key
    key, raw = ".".join(keys), text.split("=", 1)[1]
    values = split_top_level(raw)
    if len(values) == 1:
        return None
    for i, v in enumerate(values, start=1):
        if not v:
            raise ConfigError(
                f"{what} '{text}': value {i} of {len(values)} is empty (write a,b,c; a value "
                "that is itself a list needs brackets: [64,64])"
            )
    parsed = [parse_override(f"{key}={v}")[1] for v in values]
    for i, p in enumerate(parsed):
        if p in parsed[:i]:
            raise ConfigError(
                f"{what} '{text}' lists {values[i]} twice (a value that is itself a list needs "
                "brackets: [64,64])"
            )
    return Axis(key, tuple(values))


def split_overrides(overrides: Sequence[str]) -> tuple[list[Axis], list[str]]:
    """Separate swept overrides (``k=a,b``) from fixed ones; a key may appear only once."""
    axes, fixed, seen = [], [], set()
    for text in overrides:
        axis = parse_axis(text)
        key = axis.key if axis else ".".join(parse_override(text)[0])
        if key in seen:
            raise ConfigError(f"override key '{key}' is given twice; give it once")
        seen.add(key)
        if axis is None:
            fixed.append(text)
        else:
            axes.append(axis)
    return axes, fixed


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "", text.replace(",", "-"))[:40] or "x"


def grid(axes: Sequence[Axis]) -> list[Point]:
    """The cartesian product of the axes, first axis slowest, each point with a unique name."""
    names = short_names([a.key for a in axes])
    width = len(str(max(1, _product(axes))))
    points = []
    for i, combo in enumerate(itertools.product(*(a.values for a in axes)), start=1):
        parts = "_".join(f"{_safe(n)}-{_safe(v)}" for n, v in zip(names, combo))
        label = " ".join(f"{n}={v}" for n, v in zip(names, combo))
        values = dict(zip((a.key for a in axes), combo))
        points.append(Point(f"{i:0{width}d}_{parts}", values, label))
    return points


def short_names(keys: Sequence[str]) -> list[str]:
    """Last key parts (``optim.lr`` -> ``lr``), or whole keys where two would be the same."""
    short = [k.rsplit(".", 1)[-1] for k in keys]
    # a short key shared by two axes (model.dropout, data.dropout) would name points ambiguously
    return [s if short.count(s) == 1 else k for s, k in zip(short, keys)]


def _product(axes: Sequence[Axis]) -> int:
    total = 1
    for a in axes:
        total *= len(a.values)
    return total


def _digest(cfg) -> str:
    return hashlib.sha256(dump_config(cfg).encode()).hexdigest()[:16]


class SweepLock:
    """An OS lock on ``sweep_dir/.lock``: two processes never run one sweep folder at once."""

    def __init__(self, sweep_dir: Path) -> None:
        self._fd = os.open(sweep_dir / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise CheckpointError(
                f"sweep folder {sweep_dir} is in use by another process; wait for it or choose "
                "another --sweep-dir"
            ) from None

    def release(self) -> None:
        os.close(self._fd)


@dataclass
class Sweep:
    """A planned sweep: recipe, fixed overrides, axes, points and where it is written."""

    recipe: str
    fixed: list[str]
    axes: list[Axis]
    points: list[Point]
    digests: dict[str, str]  # point name -> hash of its resolved config
    sweep_dir: Path
    kind: str = "sweep"
    name: str = "sweep"

    def identity(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "recipe": self.recipe,
            "fixed": self.fixed,
            "axes": [{"key": a.key, "values": list(a.values)} for a in self.axes],
        }


def plan_sweep(
    recipe: str,
    axes: Sequence[Axis],
    fixed: Sequence[str],
    sweep_dir: str | Path | None = None,
    kind: str = "sweep",
) -> Sweep:
    """Validate every point through the loader (ConfigError naming the key) and plan the folder.

    ``sweep_dir`` defaults to ``sweeps/<recipe name>-<timestamp>``.
    """
    from bigtrain.run import default_run_dir

    if not axes:
        raise ConfigError(
            "nothing to sweep: give at least one key with several values, e.g. "
            "optim.name=sgd,adam (a comma separates values)"
        )
    points = grid(axes)
    digests, name = {}, "sweep"
    for p in points:
        cfg = load_recipe(recipe, [*fixed, *p.overrides])
        _preflight(cfg)
        digests[p.name], name = _digest(cfg), cfg.name
    folder = Path(sweep_dir) if sweep_dir is not None else default_run_dir(name, root="sweeps")
    sweep = Sweep(str(recipe), list(fixed), list(axes), points, digests, folder, kind, name)
    _open_folder(sweep)  # a folder holding another sweep is refused before anything is printed
    return sweep


def _preflight(cfg) -> None:
    """Build the optimizer on a dummy parameter: an optimizer name or option that does not
    apply (``optim.name=sgdd``, betas for sgd) fails before any point has trained."""
    import torch

    from bigtrain.optim import build_optimizer

    build_optimizer(torch.nn.Linear(1, 1), cfg.optim)


def _open_folder(sweep: Sweep) -> dict[str, Any]:
    """The sweep's state: a fresh one, or the folder's own when it holds this very sweep."""
    d = sweep.sweep_dir
    if d.exists() and not d.is_dir():
        raise ConfigError(f"--sweep-dir {d} is a file, not a folder")
    path = d / SWEEP_FILE
    if path.is_file():
        try:
            state = json.loads(path.read_text())
            old = {k: state[k] for k in ("kind", "recipe", "fixed", "axes")}
        except (OSError, ValueError, KeyError, TypeError):
            raise CheckpointError(f"{path} is corrupt; choose another --sweep-dir") from None
        new = sweep.identity()
        changed = [k for k in new if old.get(k) != new[k]]
        if changed:
            raise ConfigError(
                f"sweep folder {d} holds a different sweep ({', '.join(changed)} differ: "
                f"{_describe(old)}); choose another --sweep-dir"
            )
        digests = {_values_key(q.values): sweep.digests[q.name] for q in sweep.points}
        for p in state.get("points", []):
            digest = digests.get(_values_key(p.get("values", {})))
            if p.get("status") == "completed" and digest != p.get("config"):
                raise ConfigError(
                    f"sweep folder {d}: point {p['name']} was trained from a different resolved "
                    "recipe (the recipe file changed since); choose another --sweep-dir"
                )
        return state
    if d.is_dir() and any(not e.name.startswith(".") for e in d.iterdir()):
        raise ConfigError(f"--sweep-dir {d} is not empty and holds no sweep; choose another")
    return {
        "format": _FORMAT,
        **sweep.identity(),
        "name": sweep.name,
        "points": [
            {
                "name": p.name,
                "label": p.label,
                "values": p.values,
                "overrides": p.overrides,
                "status": "pending",
            }
            for p in sweep.points
        ],
    }


def _values_key(values: dict[str, str]) -> str:
    return json.dumps(values, sort_keys=True)


def _describe(identity: dict[str, Any]) -> str:
    axes = " ".join(f"{a['key']}={','.join(a['values'])}" for a in identity.get("axes", []))
    return f"{identity.get('kind')} of {identity.get('recipe')} over {axes}"


def run_sweep(
    sweep: Sweep,
    on_built: Callable[[Any], dict[str, Any]] | None = None,
    say: Callable[[str], None] = lambda message: None,
) -> dict[str, Any]:
    """Run every point not yet completed, in order, saving ``sweep.json`` after each.

    A point that fails with a BigtrainError (a diverging LR stops on a NaN loss) is recorded
    as failed with its message and the sweep goes on. ``on_built(run)`` may return extra facts
    about a built run (before it trains) to keep in its record. Returns the sweep's state.
    """
    d = sweep.sweep_dir
    state = _open_folder(sweep)
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot create sweep folder {d}: {e.strerror}") from None
    lock = SweepLock(d)
    try:
        # matched by their values, not names: a name is only a folder-safe label
        records = {_values_key(p["values"]): p for p in state["points"]}
        total = len(sweep.points)
        for i, point in enumerate(sweep.points, start=1):
            rec = records[_values_key(point.values)]
            head = f"[{i}/{total}] {point.label}"
            if rec.get("status") == "completed":
                say(f"{head}: completed earlier, skipped")
                continue
            say(f"{head} ...")
            rec.update(_run_point(sweep, point, rec, state, on_built))
            say(f"{head}: {describe_result(rec)}")
        _save(d, state)
    finally:
        lock.release()
    return state


def _save(d: Path, state: dict[str, Any]) -> None:
    atomic_write_text(d / SWEEP_FILE, json.dumps(json_safe(state), indent=2))


def _run_point(sweep, point, rec, state, on_built) -> dict[str, Any]:
    from bigtrain.run import build_run

    run_dir = sweep.sweep_dir / rec.get("run_dir", str(Path("runs") / point.name))
    if rec.get("status") == "failed" and run_dir.exists():
        shutil.rmtree(run_dir)  # a failed point starts over: its checkpoint led to the failure
    resume = (run_dir / "checkpoints" / "latest").is_file()
    rec.update(status="running", run_dir=str(run_dir.relative_to(sweep.sweep_dir)), message=None)
    rec["config"] = sweep.digests[point.name]
    _save(sweep.sweep_dir, state)
    start = time.monotonic()
    run = None
    try:
        run = build_run(
            sweep.recipe, [*sweep.fixed, *point.overrides], run_dir=run_dir, resume=resume,
            quiet=True,
        )  # fmt: skip
        if on_built is not None:
            rec["extra"] = on_built(run)
        summary = run.fit()
    except BigtrainError as e:
        steps = run.trainer.state.step if run is not None else 0
        return {"status": "failed", "message": str(e), "steps": steps, **_results(run_dir)}
    except BaseException as e:
        # Ctrl-C (or a bug): the next invocation continues this point from its checkpoint
        interrupted = isinstance(e, KeyboardInterrupt)
        rec["status"] = "interrupted" if interrupted else f"crashed: {type(e).__name__}"
        _save(sweep.sweep_dir, state)
        raise
    finally:
        if run is not None:
            run.close()
    status = str(summary.get("status", ""))
    out = _results(run_dir)
    out["sweep_wall_time_s"] = round(time.monotonic() - start, 3)
    if status.startswith(_DONE):
        out.update(status="completed", message=None if status == "completed" else status)
    else:
        out.update(status="failed", message=status)
    return out


def _results(run_dir: Path) -> dict[str, Any]:
    """What a run folder says about the point: monitored metric (final, best), test, size."""
    from bigtrain.report.html import read_records

    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    records = read_records(run_dir / "metrics.jsonl", []) if run_dir.is_dir() else []
    best = summary.get("best") or {}
    monitor = best.get("metric") or "val/loss"
    split, key = monitor.split("/", 1) if "/" in monitor else ("val", monitor)
    values = [r[key] for r in records if r.get("kind") == split and key in r]
    test = summary.get("test") or {}
    out = {
        "monitor": monitor,
        "mode": _mode(run_dir, monitor),
        "final": values[-1] if values else None,
        "best": best.get("value"),
        "best_step": best.get("step"),
        "test": test.get(key),
        "test_split": summary.get("test_split"),
        "test_metrics": test,
        "parameters": summary.get("parameters"),
        "wall_time_s": summary.get("wall_time_s"),
    }
    if "steps" in summary:
        out["steps"] = summary["steps"]
    return out


def _mode(run_dir: Path, monitor: str) -> str:
    from bigtrain.build import monitor_mode_for
    from bigtrain.run import saved_config

    try:
        mode = (saved_config(run_dir).get("trainer") or {}).get("monitor_mode")
    except CheckpointError:
        mode = None
    return mode or monitor_mode_for(monitor)


def describe_result(rec: dict[str, Any]) -> str:
    """One line about a point's outcome: ``val/accuracy 0.9741 (best 0.9759 @ 600) in 38 s``."""
    if rec.get("status") != "completed":
        return f"{rec.get('status')}: {rec.get('message')}"
    best = "" if rec.get("best") is None else f" (best {rec['best']:.4g} @ {rec['best_step']})"
    final = "-" if rec.get("final") is None else f"{rec['final']:.4g}"
    secs = rec.get("wall_time_s")
    return f"{rec['monitor']} {final}{best}, {rec.get('steps')} steps in {secs or 0:.1f} s"


def ranked(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Points best first by the monitored metric (best value); failed and pending last."""

    def key(p):
        v = p.get("best") if p.get("best") is not None else p.get("final")
        if p.get("status") != "completed" or v is None:
            return (1, 0.0, 0.0, p["name"])
        sign = -1 if p.get("mode") == "max" else 1
        final = p.get("final") if p.get("final") is not None else v
        return (0, sign * v, sign * final, p["name"])  # ties: the better final value first

    return sorted(state["points"], key=key)
