"""Split a model's trainable parameters into a weight-decay group and a no-decay group."""

from __future__ import annotations

from typing import Any

from torch import nn

from bigtrain.errors import ConfigError

DECAY_FILTERS = ("matrices", "all")


def decays(param: nn.Parameter, decay_filter: str) -> bool:
    """True when ``param`` should get weight decay under ``decay_filter``.

    ``"matrices"`` decays tensors with ``ndim >= 2`` (linear/conv weights, embeddings): biases and
    LayerNorm/BatchNorm scales are 1-D, and decaying them only fights the normalisation.
    """
    if decay_filter == "all":
        return True
    if decay_filter == "matrices":
        return param.ndim >= 2
    raise ConfigError(
        f"optim.decay_filter '{decay_filter}' is unknown; choose one of: {', '.join(DECAY_FILTERS)}"
    )


def param_groups(
    model: nn.Module, weight_decay: float, decay_filter: str = "matrices"
) -> list[dict[str, Any]]:
    """Trainable parameters as optimizer param groups: decay first, then no-decay.

    Each group has ``name``, ``params``, ``weight_decay`` and ``lr_scale`` (1.0): the loop sets
    ``group["lr"] = schedule(step) * group["lr_scale"]``. Empty groups are left out; shared
    (tied) parameters appear once.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for _, p in model.named_parameters():  # named_parameters() already skips duplicates
        if not p.requires_grad:
            continue
        (decay if decays(p, decay_filter) else no_decay).append(p)
    if not decay and not no_decay:
        raise ConfigError(
            f"model {type(model).__name__} has no trainable parameters to optimize; "
            "unfreeze some (requires_grad=True)"
        )
    groups = [
        {"name": "decay", "params": decay, "weight_decay": weight_decay, "lr_scale": 1.0},
        {"name": "no_decay", "params": no_decay, "weight_decay": 0.0, "lr_scale": 1.0},
    ]
    return [g for g in groups if g["params"]]
