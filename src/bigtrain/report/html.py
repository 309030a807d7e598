"""The HTML run report: one self-contained page (inline CSS, figures as base64 PNG data URIs).

It reads what the training engine wrote into the run folder (``config.yaml``, ``metrics.jsonl``,
``summary.json``), tolerates missing pieces and unknown keys, and opens offline in any browser.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from matplotlib.figure import Figure

from bigtrain._io import atomic_write_text
from bigtrain.errors import CheckpointError

from . import figures

RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json")

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0 auto;
max-width:1100px;padding:1.5rem;color:#222;line-height:1.45}
h1{margin-bottom:.2rem}h2{border-bottom:1px solid #ddd;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ddd;padding:.25rem .6rem;
text-align:left}th{background:#f5f5f5}td.num{text-align:right;font-variant-numeric:tabular-nums}
.status{display:inline-block;padding:.1rem .5rem;border-radius:.3rem;background:#e6f4ea}
.status.stopped{background:#fdecea}.warn{background:#fff8e1;border-left:4px solid #f0ad4e;
padding:.4rem .8rem}pre{background:#f6f8fa;padding:.8rem;overflow-x:auto;font-size:.85rem}
figure{margin:1rem 0}img{max-width:100%;height:auto}figcaption{color:#666;font-size:.9rem}
"""


@dataclass
class RunData:
    """What the report needs from a run folder."""

    path: Path
    name: str
    summary: dict[str, Any]
    records: list[dict[str, Any]]
    config_text: str | None
    confusion: list[list[int]] | None = None
    warnings: list[str] = field(default_factory=list)


def read_records(path: Path, warnings: list[str]) -> list[dict[str, Any]]:
    """Records of ``metrics.jsonl``; malformed lines (e.g. a run killed mid-write) are skipped."""
    records, bad = [], []
    with path.open(encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if isinstance(rec, dict):
                records.append(rec)
            else:
                bad.append(number)
    if bad:
        warnings.append(
            f"{path.name}: skipped {len(bad)} malformed line(s), first at line {bad[0]}"
        )
    return records


def load_run(run_dir: str | os.PathLike) -> RunData:
    """Read a run folder. Missing files give an emptier report, not an error.

    Raises:
        CheckpointError: the folder does not exist or holds none of the run files.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise CheckpointError(
            f"run folder '{path}' not found; pass the folder a training run wrote"
        )
    if not any((path / f).is_file() for f in RUN_FILES):
        raise CheckpointError(
            f"'{path}' is not a run folder: it has none of {', '.join(RUN_FILES)}"
        )
    warnings: list[str] = []
    summary: dict[str, Any] = {}
    if (path / "summary.json").is_file():
        try:
            loaded = json.loads((path / "summary.json").read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            loaded = None
            warnings.append(f"summary.json could not be read ({exc}); summary left out")
        if isinstance(loaded, dict):
            summary = loaded
        elif loaded is not None:
            warnings.append("summary.json is not a JSON object; summary left out")
    else:
        warnings.append("no summary.json: the run may still be going, or it crashed")
    records = []
    if (path / "metrics.jsonl").is_file():
        records = read_records(path / "metrics.jsonl", warnings)
    config_text, config_name = None, None
    if (path / "config.yaml").is_file():
        config_text = (path / "config.yaml").read_text(encoding="utf-8", errors="replace")
        try:
            config = yaml.safe_load(config_text)
            config_name = config.get("name") if isinstance(config, dict) else None
        except yaml.YAMLError:
            warnings.append("config.yaml is not valid YAML; shown as text")
    name = str(summary.get("name") or config_name or path.resolve().name)
    confusion = confusion_matrix(summary, warnings)
    return RunData(path, name, summary, records, config_text, confusion, warnings)


def fmt(value: Any, float_format: str = ".4g") -> str:
    """A value as short, escaped text: floats with 4 significant digits by default."""
    if isinstance(value, float):
        return format(value, float_format) if math.isfinite(value) else str(value)
    if isinstance(value, dict | list):
        value = json.dumps(value)
    return html.escape(str(value))


def fmt_seconds(seconds: Any) -> str:
    """``3725.0 -> '1h 02m 05s'``; ``12.34 -> '12.3 s'``."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return fmt(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m {secs:02d}s" if hours else f"{minutes}m {secs:02d}s"


def table(
    rows: Iterable[Sequence[Any]], header: Sequence[str] | None = None, float_format: str = ".4g"
) -> str:
    """An HTML table of escaped cells; numbers are right-aligned."""
    out = ["<table>"]
    if header:
        out.append("<tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in header) + "</tr>")
    for row in rows:
        cells = []
        for cell in row:
            num = isinstance(cell, int | float) and not isinstance(cell, bool)
            text = fmt(cell, float_format)
            cells.append(f'<td class="num">{text}</td>' if num else f"<td>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</table>")
    return "\n".join(out)


def png_data_uri(fig: Figure, dpi: int = 100) -> str:
    """Render a figure to a ``data:image/png;base64,...`` URI."""
    buf = io.BytesIO()
    # metadata=None for Software: keeps matplotlib's URL out of the file (no external links at all)
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def figure_html(fig_id: str, caption: str, fig: Figure) -> str:
    """A ``<figure>`` element with the PNG embedded."""
    alt = html.escape(caption, quote=True)
    return (
        f'<figure id="fig-{fig_id}"><img alt="{alt}" src="{png_data_uri(fig)}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _last(records: Sequence[dict], kind: str, key: str) -> Any:
    steps, values = figures.series(records, kind, key)
    return values[-1] if values else None


def summary_rows(run: RunData) -> list[tuple[str, Any]]:
    """(label, value) rows of the summary table; missing entries are left out."""
    s = run.summary
    rows: list[tuple[str, Any]] = [("Run", run.name), ("Status", s.get("status", "unknown"))]
    for label, key in (("Steps", "steps"), ("Epochs", "epochs")):
        if key in s:
            rows.append((label, s[key]))
    if "wall_time_s" in s:
        rows.append(("Wall time", fmt_seconds(s["wall_time_s"])))
    best = s.get("best")
    if isinstance(best, dict) and "value" in best:
        where = f" at step {best['step']}" if "step" in best else ""
        rows.append((f"Best {best.get('metric', 'metric')}", f"{fmt(best['value'])}{where}"))
    for label, kind, key in (
        ("Final train loss", "train", "loss"),
        ("Final LR", "train", "lr"),
        ("Final batch size", "train", "batch_size"),
    ):
        value = _last(run.records, kind, key)
        if value is not None:
            rows.append((label, value))
    counts: dict[str, int] = {}
    for rec in run.records:
        counts[str(rec.get("kind"))] = counts.get(str(rec.get("kind")), 0) + 1
    if counts:
        rows.append(("Logged records", ", ".join(f"{k}: {v}" for k, v in sorted(counts.items()))))
    return rows


def final_test_metrics(run: RunData) -> dict[str, Any]:
    """Final metrics from summary.json (of its ``test_split``), else the last test record."""
    test = run.summary.get("test")
    if isinstance(test, dict) and test:
        return test
    last = [r for r in run.records if r.get("kind") == "test"]
    return {k: v for k, v in last[-1].items() if k not in figures.BOOKKEEPING} if last else {}


_SPLIT_TITLES = {"test": "Test", "val": "Validation", "train": "Train"}


def final_metrics_heading(summary: dict[str, Any]) -> str:
    """The title of the final metrics: named after the split evaluated (``test_split``; a
    language model without a test split reports its validation split)."""
    split = summary.get("test_split") or "test"
    name = _SPLIT_TITLES.get(split, str(split).capitalize()) if isinstance(split, str) else "Test"
    return html.escape(f"{name} metrics")


def confusion_matrix(summary: dict[str, Any], warnings: list[str]) -> list[list[int]] | None:
    """The summary's square, non-negative integer confusion matrix, or None."""
    cm = summary.get("confusion_matrix")
    if cm is None:
        return None
    ok = isinstance(cm, list) and cm and all(isinstance(r, list) and len(r) == len(cm) for r in cm)
    ok = ok and all(
        isinstance(c, int) and not isinstance(c, bool) and c >= 0 for r in cm for c in r
    )
    if not ok:
        warnings.append("summary.json: confusion_matrix is not a square matrix of counts; skipped")
        return None
    return cm


def per_class_rows(cm: list[list[int]], names: Sequence[str]) -> list[tuple[Any, ...]]:
    """Per class: support, precision, recall, F1 (rows of ``cm`` are true classes)."""
    rows = []
    for i, name in enumerate(names):
        tp, support = cm[i][i], sum(cm[i])
        predicted = sum(row[i] for row in cm)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        rows.append((name, support, precision, recall, f1))
    return rows


def render_html(run: RunData) -> str:
    """The report page for a loaded run."""
    title = f"{run.name} · bigtrain report"
    status = str(run.summary.get("status", "unknown"))
    status_class = "status" if status == "completed" else "status stopped"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{html.escape(title)}</title><style>{CSS}</style></head><body>",
        f'<h1>{html.escape(run.name)}</h1><p><span class="{status_class}">'
        f"{html.escape(status)}</span></p>",
    ]
    if run.warnings:
        items = "".join(f"<li>{html.escape(w)}</li>" for w in run.warnings)
        parts.append(f'<div class="warn" id="warnings"><ul>{items}</ul></div>')
    parts.append('<h2 id="summary">Summary</h2>' + table(summary_rows(run)))
    test = final_test_metrics(run)
    if test:
        heading = final_metrics_heading(run.summary)
        parts.append(f'<h2 id="test">{heading}</h2>' + table(test.items(), ("metric", "value")))
    notes = run.summary.get("notes")
    if isinstance(notes, dict) and notes:
        parts.append('<h2 id="notes">Notes</h2>' + table(notes.items(), ("key", "value")))

    makers: list[tuple[str, str, Callable[[], Figure | None]]] = [
        ("loss", "Train and validation loss against the optimizer step",
         lambda: figures.loss_figure(run.records)),
        ("val-metrics", "Validation metrics against the optimizer step",
         lambda: figures.metrics_figure(run.records, "val")),
        ("lr", "Learning rate against the optimizer step",
         lambda: figures.lr_figure(run.records)),
        ("grad-norms", "Gradient norms (log scale)",
         lambda: figures.grad_norm_figure(run.records)),
        ("throughput", "Throughput against the optimizer step",
         lambda: figures.throughput_figure(run.records)),
        ("noise-scale", "Gradient noise scale and the global batch size (dynamic batch)",
         lambda: figures.noise_scale_figure(run.records)),
    ]  # fmt: skip
    rendered = []
    for fig_id, caption, make in makers:
        fig = make()
        if fig is not None:
            rendered.append(figure_html(fig_id, caption, fig))
    parts.append('<h2 id="figures">Training curves</h2>')
    parts.append("\n".join(rendered) if rendered else "<p>No metrics were logged.</p>")

    cm = run.confusion
    if cm is not None:
        raw_names = run.summary.get("class_names")
        names = [str(c) for c in raw_names] if isinstance(raw_names, list) else []
        names = names if len(names) == len(cm) else [str(i) for i in range(len(cm))]
        total = sum(map(sum, cm))
        accuracy = sum(cm[i][i] for i in range(len(cm))) / total if total else 0.0
        parts.append('<h2 id="confusion-matrix">Confusion matrix</h2>')
        parts.append(f"<p>{total} examples, accuracy {accuracy:.4f}.</p>")
        fig = figures.confusion_matrix_figure(cm, names)
        parts.append(figure_html("confusion-matrix", "Rows: true class; columns: predicted", fig))
        header = ("class", "support", "precision", "recall", "F1")
        parts.append(table(per_class_rows(cm, names), header, float_format=".3f"))

    # sections of features that leave files in the run folder (each returns "" when absent);
    # imported here because they build on this module's helpers
    from . import explain, privacy, pruning, trust

    for section in (trust.section, explain.section, privacy.section, pruning.section):
        parts.append(section(run))

    parts.append('<h2 id="config">Config</h2>')
    if run.config_text is None:
        parts.append("<p>No config.yaml in the run folder.</p>")
    else:
        parts.append(f"<pre>{html.escape(run.config_text)}</pre>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None) -> Path:
    """Write ``report.html`` (or ``out``) for a run folder, atomically, and return its path.

    Raises:
        CheckpointError: ``run_dir`` is missing or is not a run folder.
    """
    run = load_run(run_dir)
    target = Path(out) if out is not None else run.path / "report.html"
    page = render_html(run)
    return atomic_write_text(target, page)  # readers never see a half-written page
