"""Summaries of attributions over a sample: global importance, agreement between methods, and
the share of attribution that falls on a region (e.g. the ink of a digit)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def global_importance(values: torch.Tensor) -> torch.Tensor:
    """Mean |attribution| per feature over the examples: (N, ...) -> (...)."""
    return values.abs().float().mean(dim=0)


def token_importance(
    ids: torch.Tensor, values: torch.Tensor, skip: Sequence[int] = ()
) -> dict[int, tuple[float, int]]:
    """Per token id: (mean |attribution| over its occurrences, number of occurrences).

    ``ids`` and ``values`` are (N, T); ids in ``skip`` (padding) are left out. Positions differ
    between passages, so text is summarised per token rather than per position.
    """
    flat_ids, flat = ids.reshape(-1), values.abs().float().reshape(-1)
    keep = ~torch.isin(flat_ids, torch.as_tensor(list(skip), dtype=flat_ids.dtype))
    flat_ids, flat = flat_ids[keep], flat[keep]
    uniq, inverse, counts = torch.unique(flat_ids, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(uniq)).index_add_(0, inverse, flat)
    return {int(t): (float(s / c), int(c)) for t, s, c in zip(uniq.tolist(), sums, counts.tolist())}


def compare_importance(a: Sequence[float], b: Sequence[float], k: int = 5) -> dict[str, float]:
    """How two global importances agree: Spearman's rank correlation (scipy) and the overlap
    of their top-``k`` features (a count out of ``k``, at most the number of features)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, dtype=float).ravel(), np.asarray(b, dtype=float).ravel()
    if a.shape != b.shape:
        raise ValueError(f"importances of different sizes: {a.shape} and {b.shape}")
    rho = spearmanr(a, b).statistic
    k = min(k, len(a))
    top_a, top_b = set(np.argsort(-a, kind="stable")[:k]), set(np.argsort(-b, kind="stable")[:k])
    return {"spearman": float(rho), f"top{k}_overlap": len(top_a & top_b), "k": k}


def mask_share(values: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Share of the total |attribution| on the features where ``mask`` is True, next to the
    share of features the mask covers (what a uniform attribution would give)."""
    v = values.abs().float()
    m = mask.to(torch.bool).expand_as(v)
    total = float(v.sum())
    return {
        "attribution_share": float(v[m].sum()) / total if total > 0 else float("nan"),
        "feature_share": float(m.float().mean()),
    }
