"""Per-class precision, recall, F1 and support (torchmetrics with ``average=None``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from bigtrain.errors import ConfigError

from .outputs import Outputs


def per_class_table(
    outputs: Outputs, class_names: Sequence[str] | None = None, threshold: float = 0.5
) -> list[dict[str, Any]]:
    """One row per class: ``{"class", "precision", "recall", "f1", "support"}``.

    Multi-class predictions are the top logit; binary ones are ``p > threshold`` and the table
    has both classes (0 and 1). A class never predicted has precision 0, one never present has
    recall 0 (sklearn's ``zero_division=0``).

    Raises:
        ConfigError: a regression run, or ``class_names`` of the wrong length.
    """
    import torchmetrics  # here, not at module level: it takes ~4 s to import

    if outputs.kind not in ("multiclass", "binary"):
        raise ConfigError(f"a per-class table applies to classifiers; this is a {outputs.kind} run")
    if outputs.kind == "multiclass":
        c = outputs.logits.shape[1]
        pred = outputs.logits.argmax(dim=1)
    else:
        c = 2
        pred = (outputs.preds > threshold).long()
    target = outputs.targets.long()
    names = list(class_names) if class_names is not None else [str(i) for i in range(c)]
    if len(names) != c:
        raise ConfigError(f"{len(names)} class names for {c} classes")
    kw = {"task": "multiclass", "num_classes": c, "average": None}
    values = {
        "precision": torchmetrics.functional.precision(pred, target, **kw),
        "recall": torchmetrics.functional.recall(pred, target, **kw),
        "f1": torchmetrics.functional.f1_score(pred, target, **kw),
    }
    support = torch.bincount(target, minlength=c)
    return [
        {
            "class": names[i],
            **{k: float(v[i]) for k, v in values.items()},
            "support": int(support[i]),
        }
        for i in range(c)
    ]
