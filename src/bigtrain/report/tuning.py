"""Figures of the tuning tools, as plain functions: plain rows in, a matplotlib ``Figure`` out.

* ``history_figure``: a study's metric per trial (best so far as a line) and each trial's
  learning curve against its training progress, pruned trials in grey.
* ``params_figure``: the metric against each searched value (log axes for log ranges).
* ``lr_find_figure``: the LR range test's loss against the learning rate, suggestions marked.
* ``batch_size_figure``: throughput and peak memory against the batch size, the limit marked.

Like ``figures.py`` this builds ``matplotlib.figure.Figure`` objects, never pyplot; ``save_png``
writes one atomically.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator, NullFormatter

from bigtrain._io import atomic_write_bytes

COMPLETE, PRUNED, BEST = "#1f77b4", "#9e9e9e", "#d62728"


def save_png(fig: Figure, path: str | Path, dpi: int = 90) -> Path:
    """Render ``fig`` to ``path`` (PNG) atomically; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    return atomic_write_bytes(path, buf.getvalue())


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def history_figure(rows: Sequence[Mapping[str, Any]], metric: str, mode: str) -> Figure | None:
    """Rows have ``number``, ``state`` ("complete", "pruned"...), ``value`` and
    ``intermediate`` ({progress per mille: value}); None when no trial has a value."""
    scored = [r for r in rows if _finite(r.get("value"))]
    if not scored:
        return None
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax, curves = fig.subplots(1, 2)
    done = [r for r in scored if r["state"] == "complete"]
    cut = [r for r in scored if r["state"] == "pruned"]
    ax.scatter([r["number"] for r in done], [r["value"] for r in done], color=COMPLETE,
               label="complete", zorder=3)  # fmt: skip
    if cut:
        ax.scatter([r["number"] for r in cut], [r["value"] for r in cut], color=PRUNED,
                   marker="x", label="pruned (best before)", zorder=3)  # fmt: skip
    pick = max if mode == "max" else min
    xs, best, so_far = [], [], None
    for r in sorted(done, key=lambda r: r["number"]):
        so_far = r["value"] if so_far is None else pick(so_far, r["value"])
        xs.append(r["number"])
        best.append(so_far)
    if xs:
        ax.step(xs, best, where="post", color=BEST, label="best so far")
    ax.set(xlabel="trial", ylabel=metric, title=f"Optimization history ({len(rows)} trials)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    for r in rows:
        steps = sorted(r.get("intermediate", {}).items())
        if steps:
            color = COMPLETE if r["state"] == "complete" else PRUNED
            curves.plot([s / 10 for s, _ in steps], [v for _, v in steps], color=color,
                        alpha=0.7, linewidth=1)  # fmt: skip
    curves.set(
        xlabel="training progress (%)", ylabel=metric, title="Learning curves (grey: pruned)"
    )
    curves.grid(alpha=0.3)
    return fig


def params_figure(
    rows: Sequence[Mapping[str, Any]], params: Sequence[Mapping[str, Any]], metric: str
) -> Figure | None:
    """One panel per searched key: the trials' ``value`` against their value of that key.

    ``params`` are space entries with their ``key`` (``{"key", "type", "log", "choices"}``);
    categorical choices are placed in order along the x axis.
    """
    scored = [r for r in rows if _finite(r.get("value"))]
    if not scored or not params:
        return None
    cols = min(3, len(params))
    nrows = -(-len(params) // cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False).ravel()
    for ax, p in zip(axes, params):
        key = p["key"]
        labels = [str(c) for c in p.get("choices", [])]
        for state, color, marker in (("complete", COMPLETE, "o"), ("pruned", PRUNED, "x")):
            pts = [(r["params"][key], r["value"]) for r in scored
                   if r["state"] == state and key in r["params"]]  # fmt: skip
            if not pts:
                continue
            xs = [labels.index(str(x)) if labels else x for x, _ in pts]
            ax.scatter(xs, [y for _, y in pts], color=color, marker=marker, label=state)
        if labels:
            ax.set_xticks(range(len(labels)), labels, fontsize=8)
            ax.set_xlim(-0.5, len(labels) - 0.5)
        elif _finite(p.get("low")) and _finite(p.get("high")):
            low, high = p["low"], p["high"]
            if p.get("log"):
                ax.set_xscale("log")
                ax.xaxis.set_minor_formatter(NullFormatter())  # 2x10^-3 labels would overlap
                ax.set_xlim(low / 1.2, high * 1.2)
                if p.get("type") == "int":  # a few plain integers, not powers of ten
                    ticks = sorted({round(low * (high / low) ** (i / 3)) for i in range(4)})
                    ax.set_xticks(ticks, [str(t) for t in ticks])
            else:
                pad = 0.05 * (high - low)
                ax.set_xlim(low - pad, high + pad)
        ax.set(xlabel=key, ylabel=metric)
        ax.grid(alpha=0.3)
    for ax in axes[len(params) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=8)
    return fig


def lr_find_figure(
    lrs: Sequence[float],
    losses: Sequence[float],
    smoothed: Sequence[float],
    suggestions: Mapping[str, float | None],
    title: str = "LR range test",
) -> Figure:
    """Loss (raw and smoothed) against the learning rate on a log axis; each suggestion is a
    vertical line labelled with its name and value."""
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    ax.plot(lrs, losses, color=COMPLETE, alpha=0.3, linewidth=0.8, label="loss")
    ax.plot(lrs, smoothed, color=COMPLETE, label="smoothed loss")
    for (name, lr), color in zip(suggestions.items(), (BEST, "#2ca02c", "#9467bd")):
        if lr is not None:
            ax.axvline(lr, color=color, linestyle="--", label=f"{name}: {lr:.2g}")
    ax.set_xscale("log")
    finite = [v for v in smoothed if _finite(v)]
    if finite:  # the diverging tail would squash the interesting part
        low = min(finite + [v for v in losses if _finite(v)])
        high = max(finite[0], low) * 1.6 + 1e-12
        ax.set_ylim(low - 0.05 * abs(high - low), high)
    ax.set(xlabel="learning rate", ylabel="training loss", title=title)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return fig


def batch_size_figure(
    points: Sequence[Mapping[str, Any]], limit: int | None, unit: str = "examples"
) -> Figure | None:
    """Throughput and peak memory against the batch size (log 2 axis); points have
    ``batch_size``, ``throughput`` and ``peak_bytes`` (None for sizes only predicted)."""
    measured = sorted((p for p in points if _finite(p.get("peak_bytes"))),
                      key=lambda p: p["batch_size"])  # fmt: skip
    if not measured:
        return None
    fig = Figure(figsize=(10, 3.6), layout="constrained")
    ax, mem = fig.subplots(1, 2)
    bs = [p["batch_size"] for p in measured]
    ax.plot(bs, [p["throughput"] for p in measured], marker="o", color=COMPLETE)
    ax.set(xlabel="batch size", ylabel=f"{unit}/s", title="Training throughput")
    mem.plot(bs, [p["peak_bytes"] / 2**20 for p in measured], marker="o", color=COMPLETE,
             label="measured peak")  # fmt: skip
    if limit is not None and limit < 4 * max(p["peak_bytes"] for p in measured):
        mem.axhline(
            limit / 2**20, color=BEST, linestyle="--", label=f"limit {limit / 2**20:.0f} MiB"
        )
    mem.set(xlabel="batch size", ylabel="MiB", title="Peak training memory")
    mem.legend(fontsize=8)
    for a in (ax, mem):
        a.set_xscale("log", base=2)
        a.grid(alpha=0.3, which="both")
    return fig


__all__ = [
    "batch_size_figure",
    "history_figure",
    "lr_find_figure",
    "params_figure",
    "save_png",
]
