"""Figures of a run, as plain functions: metric records in, a matplotlib ``Figure`` (or None) out.

Records are the dicts of ``metrics.jsonl``: each has ``kind`` ("train", "val", "test",
"grad_norms") and ``step``. Unknown keys are ignored and a figure whose data is missing is None.

Figures are built with ``matplotlib.figure.Figure`` and never through pyplot: no global figure
registry to leak memory, no GUI backend picked at import time, nothing changed for a notebook
that imported us. Saving to PNG renders with Agg.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from matplotlib.figure import Figure

# Keys every record has; everything else numeric in a val/test record is a metric.
BOOKKEEPING = frozenset({"kind", "step", "epoch", "time"})
TRAIN_COLOR, VAL_COLOR, TEST_COLOR = "#1f77b4", "#ff7f0e", "#2ca02c"


def _number(value: Any) -> float | None:
    # bool is an int subclass but never a metric value worth plotting
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def series(records: Iterable[dict], kind: str, key: str) -> tuple[list[float], list[float]]:
    """``(steps, values)`` of ``key`` in records of ``kind``, skipping missing/non-finite values."""
    steps, values = [], []
    for rec in records:
        if rec.get("kind") != kind:
            continue
        step, value = _number(rec.get("step")), _number(rec.get(key))
        if step is not None and value is not None:
            steps.append(step)
            values.append(value)
    return steps, values


def metric_names(records: Iterable[dict], kind: str) -> list[str]:
    """Numeric keys of records of ``kind`` (bookkeeping keys excluded), in first-seen order."""
    names: dict[str, None] = {}
    for rec in records:
        if rec.get("kind") == kind:
            for key, value in rec.items():
                if key not in BOOKKEEPING and _number(value) is not None:
                    names.setdefault(key, None)
    return list(names)


def smooth(values: Sequence[float], weight: float = 0.9) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing)."""
    out, avg = [], 0.0
    for i, v in enumerate(values, start=1):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight**i))
    return out


def _line(ax, steps, values, **kwargs) -> None:
    # A single point (or a handful) is invisible as a bare line: draw markers too.
    if len(steps) <= 20:
        kwargs.setdefault("marker", "o")
        kwargs.setdefault("markersize", 4)
    ax.plot(steps, values, **kwargs)


def _log_if_wide(ax, values: Sequence[float]) -> None:
    # Log scale only helps when the values span orders of magnitude and are all positive.
    if values and min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")


def _new(nrows: int = 1, ncols: int = 1, width: float = 7.0, height: float = 3.6):
    fig = Figure(figsize=(width, height), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def loss_figure(records: Sequence[dict]) -> Figure | None:
    """Train loss (raw and smoothed) and val/test loss against the optimizer step."""
    train = series(records, "train", "loss")
    val = series(records, "val", "loss")
    test = series(records, "test", "loss")
    if not (train[0] or val[0]):
        return None
    fig, axes = _new()
    ax = axes[0, 0]
    if len(train[0]) > 50:
        ax.plot(*train, color=TRAIN_COLOR, alpha=0.25, linewidth=0.8)
        # a window of ~5% of the points: a fixed 0.9 lags far behind a fast early drop
        weight = 1 - 1 / max(2.0, len(train[1]) / 20)
        ax.plot(train[0], smooth(train[1], weight), color=TRAIN_COLOR, label="train (smoothed)")
    elif train[0]:
        _line(ax, *train, color=TRAIN_COLOR, label="train")
    if val[0]:
        _line(ax, *val, color=VAL_COLOR, label="val")
    train_eval = series(records, "train_eval", "loss")  # LM: loss on fixed train batches
    if train_eval[0]:
        _line(ax, *train_eval, color=TRAIN_COLOR, label="train (eval batches)", linestyle="--")
    if test[0]:
        ax.plot(*test, "*", color=TEST_COLOR, markersize=10, label="test")
    _log_if_wide(ax, train[1] + val[1] + test[1])
    ax.set(xlabel="step", ylabel="loss", title="Loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def metrics_figure(records: Sequence[dict], kind: str = "val") -> Figure | None:
    """One panel per metric of ``kind`` records (loss excluded), with test values as stars."""
    names = [n for n in metric_names(records, kind) if n != "loss"]
    if not names:
        return None
    ncols = min(3, len(names))
    nrows = math.ceil(len(names) / ncols)
    fig, axes = _new(nrows, ncols, width=3.6 * ncols, height=2.9 * nrows)
    for ax, name in zip(axes.flat, names):
        _line(ax, *series(records, kind, name), color=VAL_COLOR, label=kind)
        test = series(records, "test", name)
        if kind != "test" and test[0]:
            ax.plot(*test, "*", color=TEST_COLOR, markersize=10, label="test")
            ax.legend(fontsize="small")
        ax.set(xlabel="step", title=name)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_axis_off()
    return fig


def lr_figure(records: Sequence[dict]) -> Figure | None:
    """Learning rate against the optimizer step."""
    steps, lrs = series(records, "train", "lr")
    if not steps:
        return None
    fig, axes = _new(height=3.0)
    ax = axes[0, 0]
    _line(ax, steps, lrs, color=TRAIN_COLOR)
    ax.set(xlabel="step", ylabel="learning rate", title="Learning-rate schedule")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.grid(alpha=0.3)
    return fig


def grad_norm_figure(records: Sequence[dict], top_k: int = 12) -> Figure | None:
    """Total gradient norm and per-parameter norms (the ``top_k`` largest) on log axes."""
    total = series(records, "train", "grad_norm")
    per_layer: dict[str, tuple[list[float], list[float]]] = {}
    for rec in records:
        norms, step = rec.get("norms"), _number(rec.get("step"))
        if rec.get("kind") != "grad_norms" or not isinstance(norms, dict) or step is None:
            continue
        for name, value in norms.items():
            v = _number(value)
            if v is not None and v > 0:  # log axis: zeros and negatives cannot be drawn
                steps, values = per_layer.setdefault(str(name), ([], []))
                steps.append(step)
                values.append(v)
    total = ([s for s, v in zip(*total) if v > 0], [v for v in total[1] if v > 0])
    panels = [p for p in ("total", "layers") if (total[0] if p == "total" else per_layer)]
    if not panels:
        return None
    fig, axes = _new(1, len(panels), width=7.0 if len(panels) == 1 else 12.0, height=3.8)
    for ax, panel in zip(axes.flat, panels):
        if panel == "total":
            _line(ax, *total, color=TRAIN_COLOR)
            ax.set(title="Total gradient norm (before clipping)")
        else:
            top = sorted(per_layer, key=lambda n: max(per_layer[n][1]), reverse=True)[:top_k]
            for name in top:
                _line(ax, *per_layer[name], linewidth=1.0, label=name)
            shown = f"top {len(top)} of {len(per_layer)}" if len(per_layer) > len(top) else "all"
            ax.set(title=f"Gradient norm per parameter ({shown})")
            ax.legend(fontsize="x-small", loc="center left", bbox_to_anchor=(1.01, 0.5))
        ax.set(xlabel="step", yscale="log")
        ax.grid(alpha=0.3, which="both")
    return fig


def throughput_figure(records: Sequence[dict]) -> Figure | None:
    """Examples/s, tokens/s and MFU against the step, one panel each that was logged."""
    keys = [k for k in ("examples_per_s", "tokens_per_s", "mfu") if series(records, "train", k)[0]]
    if not keys:
        return None
    fig, axes = _new(1, len(keys), width=3.8 * len(keys), height=3.0)
    for ax, key in zip(axes.flat, keys):
        _line(ax, *series(records, "train", key), color=TRAIN_COLOR)
        ax.set(xlabel="step", title=key.replace("_per_s", "/s"))
        ax.grid(alpha=0.3)
    return fig


def noise_scale_figure(records: Sequence[dict]) -> Figure | None:
    """The gradient noise scale ``B_simple`` and the global batch size against the step, both in
    examples (a dynamic-batch run logs them in its train records)."""
    noise = series(records, "train", "noise_scale")
    batch = series(records, "train", "batch_size")
    if not noise[0]:
        return None
    fig, axes = _new(height=3.4)
    ax = axes[0, 0]
    _line(ax, *noise, color=TRAIN_COLOR, label="noise scale B_simple (EMA)")
    if batch[0]:
        # the batch changes between steps and holds until the next change: a staircase
        ax.step(*batch, where="post", color=VAL_COLOR, label="global batch size")
    _log_if_wide(ax, [v for v in noise[1] + batch[1] if v > 0])
    ax.set(xlabel="step", ylabel="examples", title="Gradient noise scale and batch size")
    ax.grid(alpha=0.3)
    ax.legend()
    return fig


def confusion_matrix_figure(
    matrix: Sequence[Sequence[int]], class_names: Sequence[str] | None = None
) -> Figure:
    """Heat map of a confusion matrix (rows: true class, columns: predicted), with counts.

    Colours are row-normalised (per-class recall) so rare classes stay readable; the numbers in
    the cells are raw counts. Counts are written when there are at most 30 classes.
    """
    n = len(matrix)
    names = [str(c) for c in class_names] if class_names and len(class_names) == n else None
    names = names or [str(i) for i in range(n)]
    rows = [sum(r) or 1 for r in matrix]
    share = [[c / rows[i] for c in row] for i, row in enumerate(matrix)]
    side = min(12.0, max(4.0, 0.45 * n + 2.5))
    fig = Figure(figsize=(side + 1.2, side), layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of true class")
    tilt = max(map(len, names)) > 3  # long names overlap unless tilted
    ax.set_xticks(range(n), names, rotation=45 if tilt else 0, ha="right" if tilt else "center")
    ax.set_yticks(range(n), names)
    ax.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    if n <= 30:
        size = "medium" if n <= 12 else "x-small"
        for i, row in enumerate(matrix):
            for j, count in enumerate(row):
                color = "white" if share[i][j] > 0.5 else "black"
                ax.text(j, i, str(count), ha="center", va="center", color=color, fontsize=size)
    return fig
