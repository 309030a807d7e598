"""The optimizer registry and ``build_optimizer``.

Each entry is a factory ``f(params, *, lr, weight_decay, <fields it takes>) -> Optimizer``; its
keyword-only parameters are exactly the ``OptimConfig`` fields that apply to it, so a field set
for an optimizer that does not take it is reported instead of silently ignored.

Weight decay is decoupled (``w -= lr * wd * w``) for adamw, lamb, lion and adafactor, and an L2
term added to the gradient (``g += wd * w``, torch's ``weight_decay``) for sgd, adagrad, rmsprop
and adam.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from bigtrain._registry import Registry
from bigtrain.errors import ConfigError
from bigtrain.optim.config import OptimConfig
from bigtrain.optim.lamb import Lamb
from bigtrain.optim.lion import Lion
from bigtrain.optim.param_groups import param_groups

Params = Iterable[torch.Tensor] | Iterable[dict[str, Any]]
OptimizerFactory = Callable[..., torch.optim.Optimizer]

OPTIMIZERS: Registry[OptimizerFactory] = Registry("optimizer")

# fields every optimizer takes or that build_optimizer itself uses
_GENERIC_FIELDS = ("name", "lr", "weight_decay", "decay_filter")


def _given(**kwargs: Any) -> dict[str, Any]:
    """Only the arguments the user set, so torch's own defaults apply to the rest."""
    return {k: v for k, v in kwargs.items() if v is not None}


def _impl(foreach: bool | None, fused: bool | None = None) -> dict[str, Any]:
    """Implementation flags: foreach unless the user asked otherwise (torch's CPU default is the
    slower per-tensor loop)."""
    if fused and foreach:
        raise ConfigError("optim.fused and optim.foreach cannot both be true; set only one")
    if fused:
        return {"fused": True}
    flags: dict[str, Any] = {"foreach": True if foreach is None else foreach}
    if fused is not None:
        flags["fused"] = fused
    return flags


@OPTIMIZERS.register("sgd")
def sgd(
    params: Params,
    *,
    lr: float,
    weight_decay: float,
    momentum: float | None = None,
    nesterov: bool | None = None,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """SGD: ``b = mu*b + g; w -= lr * (g + mu*b if nesterov else b)`` (plain ``w -= lr*g``)."""
    if nesterov and not momentum:
        raise ConfigError("optim.nesterov needs optim.momentum > 0 (e.g. momentum: 0.9)")
    extra = _given(momentum=momentum, nesterov=nesterov)
    return torch.optim.SGD(
        params, lr=lr, weight_decay=weight_decay, **extra, **_impl(foreach, fused)
    )


@OPTIMIZERS.register("adagrad")
def adagrad(
    params: Params,
    *,
    lr: float,
    weight_decay: float,
    eps: float | None = None,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """Adagrad: ``s += g^2; w -= lr * g / (sqrt(s) + eps)``."""
    return torch.optim.Adagrad(
        params, lr=lr, weight_decay=weight_decay, **_given(eps=eps), **_impl(foreach, fused)
    )


@OPTIMIZERS.register("rmsprop")
def rmsprop(
    params: Params,
    *,
    lr: float,
    weight_decay: float,
    alpha: float | None = None,
    eps: float | None = None,
    momentum: float | None = None,
    foreach: bool | None = None,
) -> torch.optim.Optimizer:
    """RMSprop: ``s = alpha*s + (1-alpha)*g^2; w -= lr * g / (sqrt(s) + eps)``."""
    extra = _given(alpha=alpha, eps=eps, momentum=momentum)
    return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay, **extra, **_impl(foreach))


@OPTIMIZERS.register("adam")
def adam(
    params: Params,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """Adam: bias-corrected ``w -= lr * m_hat / (sqrt(v_hat) + eps)``; L2 weight decay."""
    extra = _given(betas=betas, eps=eps)
    return torch.optim.Adam(
        params, lr=lr, weight_decay=weight_decay, **extra, **_impl(foreach, fused)
    )


@OPTIMIZERS.register("adamw")
def adamw(
    params: Params,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """AdamW: Adam plus decoupled decay ``w -= lr * wd * w``."""
    extra = _given(betas=betas, eps=eps)
    return torch.optim.AdamW(
        params, lr=lr, weight_decay=weight_decay, **extra, **_impl(foreach, fused)
    )


@OPTIMIZERS.register("lamb")
def lamb(
    params: Params,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
) -> torch.optim.Optimizer:
    """LAMB: AdamW direction times the per-tensor trust ratio ``||w|| / ||update||``."""
    return Lamb(params, lr=lr, weight_decay=weight_decay, **_given(betas=betas, eps=eps))


@OPTIMIZERS.register("lion")
def lion(
    params: Params,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] | None = None,
) -> torch.optim.Optimizer:
    """Lion: ``w -= lr * (sign(b1*m + (1-b1)*g) + wd*w); m = b2*m + (1-b2)*g``."""
    return Lion(params, lr=lr, weight_decay=weight_decay, **_given(betas=betas))


@OPTIMIZERS.register("adafactor")
def adafactor(
    params: Params,
    *,
    lr: float,
    weight_decay: float,
    foreach: bool | None = None,
) -> torch.optim.Optimizer:
    """Adafactor: factored (row/column) second moments, no first moment, decoupled decay."""
    return torch.optim.Adafactor(params, lr=lr, weight_decay=weight_decay, **_impl(foreach))


@OPTIMIZERS.register("sparse_adam")
def sparse_adam(
    params: Params,
    *,
    lr: float,
    weight_decay: float,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
) -> torch.optim.Optimizer:
    """SparseAdam: Adam's moments updated only for the rows a batch's sparse gradient touches
    (embedding tables with ``sparse=True``); it has no weight decay."""
    if weight_decay:
        raise ConfigError(
            "optim.name sparse_adam has no weight decay; set optim.weight_decay=0 (use the "
            "model's embedding_l2 to regularise the rows a batch uses)"
        )
    groups = list(params)
    if groups and isinstance(groups[0], dict):  # SparseAdam refuses a weight_decay key
        groups = [{k: v for k, v in g.items() if k != "weight_decay"} for g in groups]
    return torch.optim.SparseAdam(groups, lr=lr, **_given(betas=betas, eps=eps))


@OPTIMIZERS.register("muon")
def muon(
    params: Params,
    *,
    lr: float,
    weight_decay: float,
    momentum: float | None = None,
    nesterov: bool | None = None,
    betas: tuple[float, float] | None = None,
    eps: float | None = None,
    adam_lr: float | None = None,
    foreach: bool | None = None,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """Muon (orthogonalised Nesterov momentum) on hidden matrices, AdamW (``betas``, ``eps``,
    at ``adam_lr``; ``foreach``/``fused`` apply to it) on embeddings, head, gains and biases
    (optim/muon.py)."""
    from bigtrain.optim.muon import MuonWithAdamW

    groups = list(params)
    if groups and not isinstance(groups[0], dict):  # plain tensors: all AdamW
        groups = [{"name": "adam_decay", "params": groups, "weight_decay": weight_decay}]
    extra = _given(momentum=momentum, nesterov=nesterov, betas=betas, eps=eps)
    return MuonWithAdamW(
        groups, lr=lr, weight_decay=weight_decay, adam_impl=_impl(foreach, fused), **extra
    )


def takes(name: str) -> list[str]:
    """The OptimConfig fields optimizer ``name`` takes, in signature order."""
    sig = inspect.signature(OPTIMIZERS.get(name))
    return [p.name for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY]


def optimizer_kwargs(cfg: OptimConfig) -> dict[str, Any]:
    """Keyword arguments for ``OPTIMIZERS.get(cfg.name)``; ConfigError for fields that don't apply."""
    accepted = takes(cfg.name)
    kwargs: dict[str, Any] = {}
    for field, info in OptimConfig.model_fields.items():
        value = getattr(cfg, field)
        if field in accepted:
            kwargs[field] = value
        elif field not in _GENERIC_FIELDS and value != info.default:
            raise ConfigError(
                f"optim.{field} does not apply to '{cfg.name}' (it takes: {', '.join(accepted)})"
            )
    return kwargs


def make_optimizer(params: Params, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Build the optimizer named by ``cfg`` over ``params`` (tensors or param-group dicts)."""
    kwargs = optimizer_kwargs(cfg)
    try:
        return OPTIMIZERS.get(cfg.name)(params, **kwargs)
    except ValueError as e:  # torch's own argument checks
        raise ConfigError(f"optim '{cfg.name}': {e}") from None


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    """Optimizer over ``model``'s trainable parameters, split into decay/no-decay groups
    (Muon: hidden matrices / AdamW groups, ``muon_param_groups``)."""
    if cfg.name == "muon":
        from bigtrain.optim.muon import muon_param_groups

        return make_optimizer(muon_param_groups(model, cfg.weight_decay, cfg.lr, cfg.adam_lr), cfg)
    return make_optimizer(param_groups(model, cfg.weight_decay, cfg.decay_filter), cfg)
