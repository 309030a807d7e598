"""Freezing and per-group learning rates as plain functions on any nn.Module (docs/transfer.md).

A frozen parameter has ``requires_grad=False``: autograd gives it no gradient, so every torch
optimizer skips it (no update, no weight decay) and it stays bitwise as it was, even while the
optimizer holds it. Gradual unfreezing relies on that: the optimizer is built once over every
parameter that will ever train, and unfreezing a block only flips ``requires_grad``.

Blocks are what the model says they are: any model with a ``blocks`` attribute (a sequence of
modules ordered from input to output) satisfies :class:`HasBlocks`: bigtrain's GPT and encoder
(their transformer blocks), EfficientNet-Lite0 and MiniLM here (stem/embeddings first).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol, runtime_checkable

from torch import nn

from bigtrain.errors import ConfigError

__all__ = [
    "HasBlocks",
    "freeze_blocks",
    "freeze_norm_stats",
    "freeze_patterns",
    "frozen_norm_layers",
    "lr_scale_groups",
    "match_patterns",
    "model_blocks",
    "set_trainable",
    "unfrozen_count",
]


@runtime_checkable
class HasBlocks(Protocol):
    """A model that names its blocks, ordered from the input to the output."""

    @property
    def blocks(self) -> Sequence[nn.Module]: ...


def _examples(names: Sequence[str], k: int = 4) -> str:
    shown = ", ".join(names[:k])
    return f"{shown}, ... ({len(names):,} in all)" if len(names) > k else shown


def match_patterns(
    model: nn.Module, patterns: Iterable[str], key: str = "finetune.freeze"
) -> dict[str, list[str]]:
    """``{pattern: [parameter names it matches]}`` (fnmatch globs, case-sensitive).

    Raises:
        ConfigError: a pattern matches no parameter (one line, with example names).
    """
    names = [n for n, _ in model.named_parameters()]
    found: dict[str, list[str]] = {}
    for pattern in patterns:
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise ConfigError(
                f"{key}: {pattern!r} matches no parameter of {type(model).__name__}; "
                f"its names look like: {_examples(names)}"
            )
        found[pattern] = hits
    return found


def set_trainable(params: Iterable[nn.Parameter], trainable: bool) -> None:
    """Set ``requires_grad`` of every parameter in ``params``."""
    for p in params:
        p.requires_grad_(trainable)


def freeze_patterns(model: nn.Module, patterns: Sequence[str]) -> list[str]:
    """Freeze every parameter whose name matches one of ``patterns``; returns the names."""
    by_name = dict(model.named_parameters())
    names = sorted({n for hits in match_patterns(model, patterns).values() for n in hits})
    set_trainable((by_name[n] for n in names), False)
    return names


def model_blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks (input first); ConfigError for a model that names none."""
    if not isinstance(model, HasBlocks):
        raise ConfigError(
            f"finetune.freeze_blocks: {type(model).__name__} does not say what its blocks are "
            "(no `blocks`); freeze by name with finetune.freeze instead"
        )
    return list(model.blocks)


def freeze_blocks(model: nn.Module, n: int) -> list[nn.Module]:
    """Freeze the first ``n`` blocks (``-1``: all); returns the frozen blocks, input first."""
    blocks = model_blocks(model)
    if n == -1:
        n = len(blocks)
    if not 0 <= n <= len(blocks):
        raise ConfigError(
            f"finetune.freeze_blocks: {type(model).__name__} has {len(blocks)} blocks, "
            f"cannot freeze {n} (use 0..{len(blocks)}, or -1 for all)"
        )
    for block in blocks[:n]:
        set_trainable(block.parameters(), False)
    return blocks[:n]


def unfrozen_count(step: int, every: int | None, n_frozen: int) -> int:
    """How many of ``n_frozen`` frozen blocks train at ``step`` when one more (from the top)
    unfreezes every ``every`` steps: 0 for the first ``every`` steps, then 1, 2, ..."""
    if not every:
        return 0
    return min(n_frozen, max(step, 0) // every)


_NORMS = (nn.modules.batchnorm._BatchNorm,)


def frozen_norm_layers(model: nn.Module) -> list[nn.Module]:
    """Batch-norm layers whose parameters are all frozen (their running statistics would still
    change in training mode)."""
    return [
        m
        for m in model.modules()
        if isinstance(m, _NORMS) and not any(p.requires_grad for p in m.parameters())
    ]


def freeze_norm_stats(model: nn.Module) -> int:
    """Put the frozen batch-norm layers in inference mode (after ``model.train()``): they then
    normalise with, and keep, their running statistics. Returns how many there are."""
    layers = frozen_norm_layers(model)
    for m in layers:
        m.eval()
    return len(layers)


def lr_scale_groups(
    model: nn.Module,
    lr_scales: Mapping[str, float],
    keep: Iterable[nn.Parameter] | None = None,
) -> list[tuple[str, float, list[nn.Parameter]]]:
    """Parameters grouped by learning-rate scale: ``[(pattern, scale, params)]``.

    Each parameter goes to the first pattern of ``lr_scales`` (in order) its name matches, else
    to ``("*", 1.0)``. Only parameters in ``keep`` are grouped (default: those that train now);
    shared (tied) parameters appear once. Empty groups are left out.

    Raises:
        ConfigError: a pattern matches no parameter.
    """
    match_patterns(model, lr_scales, key="finetune.lr_scales")
    kept = None if keep is None else {id(p) for p in keep}
    groups: dict[str, list[nn.Parameter]] = {pat: [] for pat in lr_scales}
    rest: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not (p.requires_grad if kept is None else id(p) in kept):
            continue
        pattern = next((pat for pat in lr_scales if fnmatch.fnmatchcase(name, pat)), None)
        (rest if pattern is None else groups[pattern]).append(p)
    out = [(pat, float(lr_scales[pat]), ps) for pat, ps in groups.items() if ps]
    return out + ([("*", 1.0, rest)] if rest else [])
