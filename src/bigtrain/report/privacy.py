"""Report section: the privacy budget a DP-SGD run spent."""

from __future__ import annotations

import html
from collections.abc import Sequence

from matplotlib.figure import Figure

from . import figures
from .html import RunData, figure_html, table

_ROWS = (
    ("Epsilon spent", "epsilon"),
    ("Target epsilon", "target_epsilon"),
    ("Delta", "delta"),
    ("Noise multiplier", "noise_multiplier"),
    ("Max per-example gradient norm", "max_grad_norm"),
    ("Sampling rate", "sample_rate"),
    ("Noised steps", "steps"),
    ("Accountant", "accountant"),
)


def epsilon_figure(records: Sequence[dict], target: float | None = None) -> Figure | None:
    """Epsilon spent against the optimizer step (the ``privacy`` records of metrics.jsonl)."""
    steps, values = figures.series(records, "privacy", "epsilon")
    if not steps:
        return None
    fig, axes = figures._new(height=3.2)
    ax = axes[0, 0]
    figures._line(ax, steps, values, color=figures.TRAIN_COLOR, label="epsilon spent")
    if target is not None:
        ax.axhline(target, color=figures.VAL_COLOR, linestyle="--", label="target epsilon")
    ax.set(xlabel="step", ylabel="epsilon", title="Privacy budget spent")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def section(run: RunData) -> str:
    """HTML for the run's privacy section, or "" when the run has none."""
    info = run.summary.get("privacy")
    if not isinstance(info, dict):
        return ""
    rows = [(label, info[key]) for label, key in _ROWS if info.get(key) is not None]
    if info.get("epsilon") is None and "epsilon" in info:
        rows.insert(0, ("Epsilon spent", "infinite (no noise)"))
    target = info.get("target_epsilon")
    parts = [
        '<h2 id="privacy">Privacy</h2>',
        "<p>Trained with DP-SGD (Opacus): each example's gradient clipped, Gaussian noise "
        "added, epsilon from the "
        f"{html.escape(str(info.get('accountant', 'rdp')).upper())} accountant. The guarantee "
        "covers the weights; the logged losses and gradient norms are not noised.</p>",
        table(rows, ("", "value")),
    ]
    fig = epsilon_figure(run.records, target if isinstance(target, int | float) else None)
    if fig is not None:
        parts.append(figure_html("privacy", "Epsilon spent against the optimizer step", fig))
    return "\n".join(parts)
