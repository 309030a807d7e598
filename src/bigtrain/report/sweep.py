"""Figures of sweeps and scaling fits, as plain functions (numbers and records in, Figure out).

Like ``report.figures``: built on ``matplotlib.figure.Figure``, never pyplot. These functions
know nothing of how a fit was made: the scaling figure takes the fitted curves and their
confidence bands as arrays, so ``report`` stays independent of ``plan``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure

from bigtrain.report.figures import _line, _log_if_wide, _number, series

# enough distinct colours for a bake-off; larger grids cycle through a colormap instead
_COLORS = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]  # fmt: skip


def _colors(n: int) -> list:
    if n <= len(_COLORS):
        return _COLORS[:n]
    from matplotlib import colormaps

    cmap = colormaps["viridis"]
    return [cmap(i / max(1, n - 1)) for i in range(n)]


def _wall_series(records: Sequence[dict], kind: str, key: str) -> tuple[list, list]:
    times, values = [], []
    for rec in records:
        if rec.get("kind") == kind:
            t, v = _number(rec.get("time")), _number(rec.get(key))
            if t is not None and v is not None:
                times.append(t)
                values.append(v)
    return times, values


_STYLES = ["-", "--", ":", "-."]


def _styles(labels: Sequence[str], groups: Mapping[str, tuple[str, str | None]] | None) -> dict:
    """label -> line style: colour by the first swept key, dash by the second when that reads
    better than one colour per point (a 5 optimizers x 3 LRs bake-off); else ranked colours."""
    firsts = list(dict.fromkeys(groups[k][0] for k in labels)) if groups else []
    seconds = list(dict.fromkeys(groups[k][1] for k in labels)) if groups else []
    if groups and len(firsts) <= len(_COLORS) and len(seconds) <= len(_STYLES):
        colors = dict(zip(firsts, _COLORS))
        return {
            k: {"color": colors[groups[k][0]], "linestyle": _STYLES[seconds.index(groups[k][1])]}
            for k in labels
        }
    return {k: {"color": c} for k, c in zip(labels, _colors(len(labels)))}


def sweep_figure(
    curves: Mapping[str, Sequence[dict]],
    metric: str = "val/loss",
    title: str = "",
    groups: Mapping[str, tuple[str, str | None]] | None = None,
) -> Figure | None:
    """``metric`` (``"val/accuracy"``) of each point against step and against wall time.

    ``curves`` maps a point's label to its ``metrics.jsonl`` records, best point first: it is
    drawn thicker. ``groups`` maps a label to (value of the first swept key, of the second or
    None): points then share a colour per first value and a dash per second. None when no
    point logged the metric.
    """
    kind, key = metric.split("/", 1) if "/" in metric else ("val", metric)
    drawn = {label: recs for label, recs in curves.items() if series(recs, kind, key)[0]}
    if not drawn:
        return None
    styles = _styles(list(drawn), groups)
    fig = Figure(figsize=(12.0, 4.4), layout="constrained")
    by_step, by_time = fig.subplots(1, 2, sharey=True)
    every = []
    for i, (label, recs) in enumerate(drawn.items()):
        style = {**styles[label], "linewidth": 2.6 if i == 0 else 1.3, "label": label}
        steps, values = series(recs, kind, key)
        _line(by_step, steps, values, **style)
        _line(by_time, *_wall_series(recs, kind, key), **style)
        every += values
    _log_if_wide(by_step, every)
    by_step.set(xlabel="step", ylabel=metric, title=f"{metric} against step")
    by_time.set(xlabel="wall time (s)", title=f"{metric} against wall time")
    for ax in (by_step, by_time):
        ax.grid(alpha=0.3)
    by_time.legend(fontsize="small", loc="center left", bbox_to_anchor=(1.01, 0.5))
    if title:
        fig.suptitle(title)
    return fig


def scaling_figure(
    points: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    curves: Mapping[
        str, tuple[Sequence[float], Sequence[float], Sequence[float] | None, Sequence[float] | None]
    ],
    target: tuple[float, float, float | None, float | None] | None = None,
    title: str = "",
    xlabel: str = "non-embedding parameters N",
    ylabel: str = "final val loss",
) -> Figure:
    """Data and fitted law on log-log axes, with confidence bands and an extrapolation.

    Args:
        points: label -> (N, loss) of the measured runs; a curve with the same label gets the
            same colour (e.g. one group per training length).
        curves: label -> (N grid, fitted loss, band low, band high); bands may be None.
        target: (N, predicted loss, low, high) of an extrapolation, drawn as a point with an
            error bar (low/high None when the fit has no interval).
    """
    fig = Figure(figsize=(7.5, 4.8), layout="constrained")
    ax = fig.subplots()
    labels = list(dict.fromkeys([*points, *curves]))
    color = dict(zip(labels, _colors(len(labels))))
    shown = [v for _, loss in points.values() for v in loss]
    bands: list[float] = []
    for label, (n_grid, fitted, low, high) in curves.items():
        name = "fit" if label in ("", "runs") else f"fit ({label})"
        ax.plot(n_grid, fitted, color=color[label], linewidth=1.6, label=name)
        shown += list(fitted)
        if low is not None and high is not None:
            bands += [v for v in (*low, *high) if v > 0]
        if low is not None and high is not None:
            ax.fill_between(n_grid, low, high, color=color[label], alpha=0.18, linewidth=0)
    for label, (n, loss) in points.items():
        ax.plot(n, loss, "o", color=color[label], markersize=6, label=label or "runs")
    if target is not None:
        n_t, pred, low, high = target
        err = None
        if low is not None and high is not None:
            err = [[max(pred - low, 0.0)], [max(high - pred, 0.0)]]
        ax.errorbar(
            [n_t], [pred], yerr=err, fmt="*", color="black", markersize=11, capsize=4,
            label=f"extrapolation to N={n_t:.3g}",
        )  # fmt: skip
        shown.append(pred)
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel, title=title or "Scaling fit")
    _fit_limits(ax, shown, bands)  # after the log scale, which resets the tick formatters
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize="small")
    return fig


def _fit_limits(ax, shown: list[float], bands: list[float]) -> None:
    """Y limits that show the data and the bands, but a band wide by orders of magnitude (few
    points) is cut at 3x the data's range rather than flattening the data into a line."""
    from matplotlib.ticker import FuncFormatter, NullFormatter

    if not shown:
        return
    lo, hi = min(shown), max(shown)
    low = max(min([lo / 1.05, *bands]), lo / 3)
    high = min(max([hi * 1.05, *bands]), hi * 3)
    ax.set_ylim(low, high)
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)  # "2.5", not "2.5x10^0": losses span little
    ax.yaxis.set_minor_formatter(plain if high / low < 10 else NullFormatter())
