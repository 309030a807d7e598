"""Figures of attributions: matplotlib ``Figure`` objects (no pyplot global state) and the
coloured-token HTML fragment of text explanations."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np
from matplotlib.figure import Figure

POSITIVE, NEGATIVE = "#2166ac", "#b2182b"  # RdBu ends: blue raises the score, red lowers it


# fixed layouts (inches) instead of constrained layout, which draws every figure twice
_CHAR_IN = 0.06  # width of one tick-label character at font size 7-8


def _label_width(names: Sequence[str]) -> float:
    return 0.25 + _CHAR_IN * max((len(str(n)) for n in names), default=1)


def importance_bars(
    pairs: Sequence[tuple[str, float]],
    title: str,
    top: int = 15,
    xlabel: str = "mean |attribution|",
) -> Figure:
    """Horizontal bars of the ``top`` (name, importance) pairs, the largest on top."""
    pairs = list(pairs)[:top]
    names = [str(n) for n, _ in pairs][::-1]
    vals = [v for _, v in pairs][::-1]
    label = _label_width(names)
    width, height = max(6.4, label + 3.5), 1.0 + 0.25 * max(len(pairs), 1)
    fig = Figure(figsize=(width, height))
    ax = fig.add_axes((label / width, 0.6 / height, 1 - (label + 0.25) / width, 1 - 0.95 / height))
    ax.barh(range(len(vals)), vals, color=POSITIVE)
    ax.set_yticks(range(len(vals)), names, fontsize=8)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.tick_params(axis="x", labelsize=7)
    ax.set_title(title, fontsize=9)
    return fig


def example_bars(
    names: Sequence[str], values: np.ndarray, captions: Sequence[str], top: int = 8
) -> Figure:
    """Signed attributions of a few examples (one panel each, their ``top`` features by |value|):
    blue raises the explained score, red lowers it."""
    n = len(values)
    orders = [np.argsort(-np.abs(values[i]), kind="stable")[:top][::-1] for i in range(n)]
    label = _label_width([names[j] for o in orders for j in o])
    panel = label + 2.0
    width, height = panel * n, 0.9 + 0.25 * top
    fig = Figure(figsize=(width, height))
    for i, order in enumerate(orders):
        rect = ((i * panel + label) / width, 0.45 / height, 1.8 / width, 1 - 0.8 / height)
        ax = fig.add_axes(rect)
        v = values[i][order]
        ax.barh(range(len(v)), v, color=[POSITIVE if x >= 0 else NEGATIVE for x in v])
        ax.set_yticks(range(len(v)), [str(names[j]) for j in order], fontsize=7)
        ax.axvline(0, color="#666", lw=0.6)
        ax.set_title(captions[i], fontsize=8)
        ax.tick_params(axis="x", labelsize=6)
    return fig


def _signed_limit(a: np.ndarray) -> float:
    m = float(np.abs(a).max()) if a.size else 0.0
    return m if m > 0 else 1.0


def image_attributions(images: np.ndarray, values: np.ndarray, captions: Sequence[str]) -> Figure:
    """Per example, the image (grey) above its attribution map (summed over channels;
    blue raises the explained score, red lowers it, each map on its own symmetric scale).

    ``images`` and ``values`` are (n, C, H, W); a 3-channel image is shown in colour.
    """
    n = len(images)
    fig = Figure(figsize=(1.45 * n + 0.4, 3.3))
    fig.subplots_adjust(left=0.3 / (1.45 * n + 0.4), right=0.99, bottom=0.02, top=0.92,
                        wspace=0.08, hspace=0.12)  # fmt: skip
    axes = fig.subplots(2, n, squeeze=False)
    for i in range(n):
        img = images[i]
        top, bottom = axes[0][i], axes[1][i]
        if img.shape[0] == 3:
            lo, hi = float(img.min()), float(img.max())
            top.imshow(np.transpose((img - lo) / (hi - lo or 1.0), (1, 2, 0)))
        else:
            top.imshow(img.mean(0), cmap="gray_r")
        amap = values[i].sum(0)
        lim = _signed_limit(amap)
        bottom.imshow(amap, cmap="RdBu", vmin=-lim, vmax=lim)
        top.set_title(captions[i], fontsize=7)
        for ax in (top, bottom):
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_ylabel("input", fontsize=8)
    axes[1][0].set_ylabel("attribution", fontsize=8)
    return fig


def importance_map(importance: np.ndarray, title: str) -> Figure:
    """Mean |attribution| per pixel (summed over channels) as a heat map."""
    fig = Figure(figsize=(3.6, 3.2))
    fig.subplots_adjust(left=0.03, right=0.97, bottom=0.03, top=0.9)
    ax = fig.add_subplot()
    im = ax.imshow(importance.sum(0), cmap="viridis")
    fig.colorbar(im, ax=ax, shrink=0.85)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    return fig


def token_html(tokens: Sequence[str], scores: Sequence[float], caption: str = "") -> str:
    """Tokens as ``<span>``s shaded by their attribution (blue raises the explained score, red
    lowers it; the strongest token of the passage is the most saturated). Escaped HTML."""
    lim = max((abs(float(s)) for s in scores), default=0.0) or 1.0
    spans = []
    for tok, s in zip(tokens, scores):
        alpha = min(1.0, abs(float(s)) / lim)
        rgb = "33,102,172" if s >= 0 else "178,24,43"
        text = html.escape(tok).replace("\n", "&#8629;<br>")
        spans.append(
            f'<span title="{float(s):+.4f}" style="background:rgba({rgb},{alpha:.2f});'
            f'white-space:pre-wrap">{text}</span>'
        )
    head = f"<p><b>{html.escape(caption)}</b></p>" if caption else ""
    return f'{head}<p style="font-family:monospace;line-height:1.8">{"".join(spans)}</p>'
