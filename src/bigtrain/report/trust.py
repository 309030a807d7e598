"""Report section: confidence intervals, calibration, per-class metrics and membership inference.

Reads the ``evaluation/<split>.json`` files that ``bigtrain eval --ci/--calibration/--per-class/
--membership`` writes into the run folder (this package does not import bigtrain.evaluation).
A file that cannot be read is named in a warning line; unknown keys are ignored.
"""

from __future__ import annotations

import html
import json
import math
from typing import Any

from matplotlib.figure import Figure

from .html import RunData, figure_html, fmt, table

_ORDER = {"test": 0, "val": 1, "train": 2}


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def load_evaluations(run: RunData) -> tuple[list[dict[str, Any]], list[str]]:
    """The run's evaluation records (test first), and a warning per unreadable file."""
    folder = run.path / "evaluation"
    if not folder.is_dir():
        return [], []
    found, problems = [], []
    for path in sorted(folder.glob("*.json"), key=lambda p: (_ORDER.get(p.stem, 9), p.stem)):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            problems.append(f"evaluation/{path.name} could not be read ({exc}); left out")
            continue
        if isinstance(record, dict):
            record.setdefault("split", path.stem)
            found.append(record)
        else:
            problems.append(f"evaluation/{path.name} is not a JSON object; left out")
    return found, problems


def reliability_figure(calibration: dict[str, Any]) -> Figure | None:
    """Accuracy against mean confidence per bin (before and, if fitted, after scaling)."""
    curves = []
    for key, label in (("before", "as trained"), ("after", "temperature-scaled")):
        rows = (calibration.get(key) or {}).get("reliability")
        if not isinstance(rows, list):
            continue
        pts = [(_num(r.get("confidence")), _num(r.get("accuracy")), _num(r.get("count")))
               for r in rows if isinstance(r, dict)]  # fmt: skip
        pts = [(c, a, n) for c, a, n in pts if c is not None and a is not None and n]
        if pts:
            curves.append((label, pts))
    if not curves:
        return None
    fig = Figure(figsize=(4.8, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], color="#999", linestyle="--", linewidth=1, label="perfect")
    most = max(n for _, pts in curves for _, _, n in pts)
    for (label, pts), marker, color in zip(curves, ("o", "s"), ("#1f77b4", "#ff7f0e")):
        xs, ys = [c for c, _, _ in pts], [a for _, a, _ in pts]
        ax.plot(xs, ys, color=color, alpha=0.5, linewidth=1)
        # marker area follows the bin's count: a bin of 2 examples should not catch the eye
        sizes = [12 + 180 * n / most for _, _, n in pts]
        ax.scatter(xs, ys, s=sizes, marker=marker, color=color, label=label, zorder=3)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("mean confidence in bin")
    ax.set_ylabel("accuracy in bin")
    ax.grid(alpha=0.3)
    ax.legend(
        loc="upper left", title="marker area: examples in bin", title_fontsize=8, markerscale=0.5
    )
    return fig


def _ci_html(record: dict[str, Any]) -> str:
    ci = record.get("ci")
    if not isinstance(ci, dict) or not ci:
        return ""
    boot = record.get("bootstrap") if isinstance(record.get("bootstrap"), dict) else {}
    rows = [
        (name, v.get("value"), v.get("low"), v.get("high"))
        for name, v in ci.items()
        if isinstance(v, dict)
    ]
    level = _num(boot.get("level"))
    head = f"{level:g} " if level is not None else ""
    note = (
        f"<p>Percentile bootstrap: {fmt(boot.get('resamples'))} resamples of the "
        f"{fmt(boot.get('n'))} examples (seed {fmt(boot.get('seed'))}); the model is fixed, "
        "the test set is resampled.</p>"
    )
    return (
        f"<h4>Metrics with {html.escape(head)}confidence intervals</h4>"
        + table(rows, ("metric", "value", "low", "high"))
        + note
    )


def _calibration_html(record: dict[str, Any], split: str) -> str:
    cal = record.get("calibration")
    if not isinstance(cal, dict):
        return ""
    rows = []
    for key, label in (("before", "as trained"), ("after", "temperature-scaled")):
        part = cal.get(key)
        if isinstance(part, dict):
            t = 1.0 if key == "before" else cal.get("temperature")
            rows.append((label, part.get("nll"), part.get("ece"), t))
    parts = [
        f"<h4>Calibration ({fmt(cal.get('n_bins'))} equal-width bins)</h4>",
        table(rows, ("", "NLL", "ECE", "temperature")),
    ]
    if "after" in cal:
        parts.append(
            f"<p>Temperature fitted on the validation split ({fmt(cal.get('n_val'))} examples) "
            "by minimising its NLL; predictions are unchanged.</p>"
        )
    if cal.get("temperature_note"):
        parts.append(f"<p>Temperature scaling {html.escape(str(cal['temperature_note']))}.</p>")
    fig = reliability_figure(cal)
    if fig is not None:
        caption = f"Reliability diagram ({split}): points on the diagonal are calibrated"
        parts.append(figure_html(f"reliability-{split}", caption, fig))
    return "\n".join(parts)


def _per_class_html(record: dict[str, Any]) -> str:
    rows = record.get("per_class")
    if not isinstance(rows, list) or not rows:
        return ""
    keys = ("class", "precision", "recall", "f1", "support")
    body = [tuple(r.get(k) for k in keys) for r in rows if isinstance(r, dict)]
    return "<h4>Per class</h4>" + table(body, keys, float_format=".3f")


def _membership_html(record: dict[str, Any]) -> str:
    mia = record.get("membership")
    if not isinstance(mia, dict):
        return ""
    rows = [
        ("attack AUC", mia.get("auc")),
        ("membership advantage (max TPR - FPR)", mia.get("advantage")),
        ("AUC standard deviation if nothing leaked", mia.get("null_std")),
        ("train examples attacked", mia.get("n_members")),
        ("held-out examples attacked", mia.get("n_nonmembers")),
    ]
    rows = [r for r in rows if r[1] is not None]
    return (
        "<h4>Membership inference</h4>"
        "<p>Loss-threshold attack (Yeom et al. 2018): guess &ldquo;was in the training set&rdquo; "
        "when the loss is low. AUC 0.5 means the losses give no one away.</p>" + table(rows)
    )


def section(run: RunData) -> str:
    """HTML for the run's trust section, or "" when the run has none."""
    records, problems = load_evaluations(run)
    if not records and not problems:
        return ""
    parts = ['<h2 id="trust">Evaluation you can trust</h2>']
    if problems:
        items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
        parts.append(f'<div class="warn"><ul>{items}</ul></div>')
    for record in records:
        split = str(record.get("split"))
        body = [
            _ci_html(record),
            _calibration_html(record, split),
            _per_class_html(record),
            _membership_html(record),
        ]
        body = [b for b in body if b]
        if not body:
            continue
        checkpoint = record.get("checkpoint")
        where = f" (checkpoint {html.escape(str(checkpoint))})" if checkpoint else ""
        parts.append(f'<h3 id="trust-{html.escape(split)}">Split: {html.escape(split)}{where}</h3>')
        parts.extend(body)
    return "\n".join(parts)
