"""Report section: attributions written by `bigtrain explain` (``RUN_DIR/explain/*/``).

Only reads the files (summary.json, PNG figures): the report never imports bigtrain.explain.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .html import RunData, fmt, table

TOP = 10
EXAMPLES = 4


def _png_uri(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if not data.startswith(b"\x89PNG"):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figure(fig_id: str, caption: str, uri: str) -> str:
    alt = html.escape(caption, quote=True)
    return (
        f'<figure id="fig-{fig_id}"><img alt="{alt}" src="{uri}">'
        f"<figcaption>{html.escape(caption)}</figcaption></figure>"
    )


def _tokens(tokens: list, scores: list) -> str:
    """Coloured tokens (blue raises the target's score, red lowers it), escaped."""
    nums = [float(s) if isinstance(s, int | float) else 0.0 for s in scores]
    lim = max((abs(s) for s in nums), default=0.0) or 1.0
    spans = []
    for tok, s in zip(tokens, nums):
        rgb = "33,102,172" if s >= 0 else "178,24,43"
        text = html.escape(str(tok)).replace("\n", "&#8629;<br>")
        spans.append(
            f'<span title="{s:+.4f}" style="background:rgba({rgb},{min(1.0, abs(s) / lim):.2f});'
            f'white-space:pre-wrap">{text}</span>'
        )
    return f'<p style="font-family:monospace;line-height:1.8">{"".join(spans)}</p>'


def _facts(s: dict[str, Any]) -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = [
        ("Inputs", f"{s.get('n_inputs')} of the {s.get('split', '?')} split"),
        ("Target", s.get("target", "?")),
        ("Baseline", s.get("baseline", "?")),
    ]
    settings = s.get("settings")
    if isinstance(settings, dict) and settings:
        rows.append(("Settings", ", ".join(f"{k}={v}" for k, v in settings.items())))
    delta = s.get("convergence_delta")
    if isinstance(delta, dict) and "max_abs" in delta:
        rows.append(
            ("Completeness gap", f"max {fmt(delta['max_abs'])}, mean {fmt(delta.get('mean_abs'))}"
             f" (mean |f(x) - f(baseline)| {fmt(delta.get('mean_abs_output_change'))})")
        )  # fmt: skip
    fg = s.get("foreground")
    if isinstance(fg, dict) and isinstance(fg.get("attribution_share"), int | float):
        rows.append(
            ("On the digit/object", f"{fg['attribution_share']:.1%} of |attribution| on "
             f"{fg.get('feature_share', 0):.1%} of the pixels (brighter than the background)")
        )  # fmt: skip
    for note in s.get("notes") or []:
        rows.append(("Note", note))
    return rows


def _method_section(folder: Path, s: dict[str, Any]) -> str:
    method = str(s.get("method", folder.name))
    fid = "explain-" + "".join(c if c.isalnum() else "-" for c in folder.name)
    parts = [f'<h3 id="{fid}">{html.escape(method)}</h3>', table(_facts(s))]
    rows = [
        (i, str(r.get("feature")), r.get("mean_abs"))
        for i, r in enumerate(s.get("global") or [], start=1)
        if isinstance(r, dict)
    ][:TOP]
    if rows:
        parts.append(table(rows, ("rank", "feature", "mean |attribution|")))
    agreement = s.get("agreement")
    if isinstance(agreement, dict) and agreement:
        agree_rows = []
        for other, a in sorted(agreement.items()):
            if isinstance(a, dict) and "spearman" in a:
                k = a.get("k", 5)
                agree_rows.append((other, a["spearman"], f"{a.get(f'top{k}_overlap')}/{k}"))
        header = ("other method (same inputs)", "Spearman ρ of importances", "top-k overlap")
        parts.append(table(agree_rows, header, float_format=".3f"))
    for i, fig in enumerate(s.get("figures") or []):
        name = fig.get("file") if isinstance(fig, dict) else None
        if not isinstance(name, str) or Path(name).name != name:
            continue  # only files of this folder
        uri = _png_uri(folder / name)
        if uri is not None:
            parts.append(_figure(f"{fid}-{i}", str(fig.get("caption", name)), uri))
    for ex in (s.get("examples") or [])[:EXAMPLES]:
        if isinstance(ex, dict) and isinstance(ex.get("tokens"), list):
            parts.append(f"<p><b>{html.escape(str(ex.get('caption', '')))}</b></p>")
            parts.append(_tokens(ex["tokens"], ex.get("scores") or []))
    return "\n".join(parts)


def section(run: RunData) -> str:
    """HTML for the run's explain section, or "" when the run has none."""
    root = run.path / "explain"
    if not root.is_dir():
        return ""
    parts, problems = [], []
    for summary in sorted(root.glob("*/summary.json")):
        try:
            s = json.loads(summary.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            s = None
        if not isinstance(s, dict):
            problems.append(f"{summary.parent.name}/summary.json could not be read; skipped")
            continue
        parts.append(_method_section(summary.parent, s))
    if not parts and not problems:
        return ""
    head = [
        '<h2 id="explanations">Explanations</h2>',
        "<p>Attributions from <code>bigtrain explain</code>: how much each input feature moved "
        "the explained output away from its value at the baseline. Global importance is the "
        "mean |attribution| per feature over the explained inputs.</p>",
    ]
    if problems:
        items = "".join(f"<li>{html.escape(p)}</li>" for p in problems)
        head.append(f'<div class="warn"><ul>{items}</ul></div>')
    return "\n".join(head + parts)
