"""Structured pruning: whole conv channels, hidden neurons and attention heads (docs/pruning.md).

A *unit group* is a producer layer whose output units (conv filters, Linear rows) feed exactly
one consumer layer through ops that keep a zero a zero (ReLU/GELU/tanh, dropout, pooling, a
BatchNorm whose scale and shift are masked too, a flatten). The groups are found by tracing the
model with ``torch.fx`` (a module that does not trace is searched child by child), so a unit
whose output is also used elsewhere (a residual) is never pruned. Attention heads are found by
their layout (``FusedAttention``): a fused ``c_attn`` (q | k | v) and an output ``c_proj``.

Masking a unit zeroes its weight row, bias and BatchNorm scale/shift, so its output is exactly
zero and ``remove_pruned_units`` can rebuild the layers without it (and slice the consumer's
inputs) without changing what the model computes.
"""

from __future__ import annotations

import inspect
import operator
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm

from bigtrain.compress.prune import (
    check_amount,
    effective,
    is_masked,
    make_permanent,
    set_mask,
)
from bigtrain.errors import CheckpointError, ConfigError

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ZERO_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.Tanh, nn.SiLU, nn.LeakyReLU, nn.ELU, nn.Hardtanh, nn.Mish,
    nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
    nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d,
)  # fmt: skip
_ZERO_FUNCS = {F.relu, F.gelu, F.silu, F.dropout, F.leaky_relu, F.elu, torch.relu, torch.tanh,
               F.max_pool2d, F.avg_pool2d, torch.square, operator.neg}  # fmt: skip
_ZERO_METHODS = {"relu", "tanh", "square", "contiguous"}


@runtime_checkable
class FusedAttention(Protocol):
    """Attention laid out like bigtrain's GPT and encoder: ``c_attn`` makes q | k | v (each
    ``n_embd`` wide, ``n_head`` heads), ``c_proj`` mixes the heads back. Heads are removable
    when the module also reads its head size from ``head_dim``."""

    c_attn: nn.Linear
    c_proj: nn.Linear
    n_head: int
    n_embd: int


def is_attention(m: nn.Module) -> bool:
    if not isinstance(m, FusedAttention) or not isinstance(m.c_attn, nn.Linear):
        return False
    n, h = m.n_embd, m.n_head
    return (
        isinstance(m.c_proj, nn.Linear)
        and m.c_attn.out_features == 3 * n
        and m.c_proj.in_features == n
        and h >= 1
        and n % h == 0
    )


def head_dim(m: nn.Module) -> int:
    return int(getattr(m, "head_dim", m.n_embd // m.n_head))


@dataclass
class UnitGroup:
    """Units of ``producer`` (rows of its weight) read by ``consumer`` (``spatial`` inputs
    each: H*W after a flatten), with an optional BatchNorm in between."""

    producer: str
    consumer: str
    bn: str | None = None
    spatial: int = 1
    kind: str = "neurons"  # or "channels"


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return is_attention(m) or super().is_leaf_module(m, qualname)


def _trace(module: nn.Module) -> fx.Graph | None:
    """The module's fx graph, or None when it does not trace (data-dependent control flow).

    Tracing runs Python code of the modules it enters, which may set attributes (an MoE layer
    stores its routing counts): every module's attributes are put back afterwards.
    """
    saved = [(m, dict(m.__dict__)) for m in module.modules()]
    try:
        params = inspect.signature(module.forward).parameters.values()
        concrete = {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}
        return _Tracer().trace(module, concrete_args=concrete or None)
    except Exception:  # any failure just means: look inside its children instead
        return None
    finally:
        for m, d in saved:
            m.__dict__.clear()
            m.__dict__.update(d)


def _flattens(node: fx.Node) -> bool:
    start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
    end = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
    return start == 1 and end == -1


def _only_input(node: fx.Node, cur: fx.Node) -> bool:
    """``node`` reads ``cur`` as its first argument and no other tensor."""
    others = [a for a in (*node.args[1:], *node.kwargs.values()) if isinstance(a, fx.Node)]
    return bool(node.args) and node.args[0] is cur and not others


def _follow(node: fx.Node, mods: dict[str, nn.Module]) -> tuple[str, str | None, bool] | None:
    """(consumer, batch norm, flattened) downstream of a producer node, or None."""
    cur, bn, flat = node, None, False
    while True:
        users = list(cur.users)
        if len(users) != 1:
            return None
        u = users[0]
        if u.op == "call_module":
            m = mods[u.target]
            if isinstance(m, (nn.Linear, *_CONV)):
                return (u.target, bn, flat) if _only_input(u, cur) else None
            if isinstance(m, _BatchNorm) and bn is None and not flat:
                bn = u.target
            elif isinstance(m, nn.Flatten) and m.start_dim == 1 and m.end_dim == -1:
                flat = True
            elif not isinstance(m, _ZERO_MODULES):
                return None
        elif u.op == "call_function" and u.target in _ZERO_FUNCS and _only_input(u, cur):
            pass
        elif u.op == "call_function" and u.target is torch.flatten and _flattens(u):
            flat = True
        elif u.op == "call_method" and u.target in _ZERO_METHODS and _only_input(u, cur):
            pass
        elif u.op == "call_method" and u.target == "flatten" and _flattens(u):
            flat = True
        else:
            return None
        cur = u


def _groups_in(graph: fx.Graph, root: nn.Module, prefix: str) -> list[UnitGroup]:
    mods = dict(root.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    groups = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        prod = mods[node.target]
        if not isinstance(prod, (nn.Linear, *_CONV)) or (
            isinstance(prod, _CONV) and prod.groups != 1
        ):
            continue
        found = _follow(node, mods)
        if found is None:
            continue
        cname, bn, flat = found
        cons = mods[cname]
        n = prod.out_features if isinstance(prod, nn.Linear) else prod.out_channels
        if calls[cname] != 1 or (bn is not None and mods[bn].num_features != n):
            continue
        if isinstance(cons, _CONV):
            if isinstance(prod, nn.Linear) or flat or cons.groups != 1 or cons.in_channels != n:
                continue
            spatial = 1
        else:
            if isinstance(prod, _CONV) and not flat or cons.in_features % n:
                continue
            spatial = cons.in_features // n
            if isinstance(prod, nn.Linear) and spatial != 1:
                continue
        kind = "channels" if isinstance(prod, _CONV) else "neurons"
        q = (lambda s: f"{prefix}{s}") if prefix else (lambda s: s)
        groups.append(UnitGroup(q(node.target), q(cname), bn and q(bn), spatial, kind))
    return groups


def find_groups(model: nn.Module) -> list[UnitGroup]:
    """Every prunable unit group of ``model`` (see the module docstring)."""
    out: list[UnitGroup] = []

    def visit(module: nn.Module, prefix: str) -> None:
        if is_attention(module) or not any(True for _ in module.children()):
            return
        graph = _trace(module)
        if graph is not None:
            out.extend(_groups_in(graph, module, prefix))
            return
        for name, child in module.named_children():
            visit(child, f"{prefix}{name}.")

    visit(model, "")
    return out


def attention_modules(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if is_attention(m)]


def _head_slices(m: nn.Module, h: int) -> list[slice]:
    """Rows of ``c_attn`` for head h: its q, k and v slices."""
    hd, n = head_dim(m), m.n_embd
    return [slice(s * n + h * hd, s * n + (h + 1) * hd) for s in range(3)]


def structured_targets(model: nn.Module, exclude: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    """(module, tensor) pairs structured pruning masks, in a fixed order (the recipe's
    ``prune:`` section masks these at build time so checkpoints always hold the same names)."""
    from bigtrain.compress.prune import _excluded

    mods = dict(model.named_modules())
    pairs: list[tuple[str, str]] = []
    for g in find_groups(model):
        if _excluded(g.producer, exclude):
            continue
        for mname in (g.producer, g.bn):
            if mname is not None:
                pairs += [(mname, t) for t in ("weight", "bias") if _has(mods[mname], t)]
    for a in attention_modules(model):
        if not _excluded(a, exclude):
            pairs += [(f"{a}.c_attn", t) for t in ("weight", "bias") if _has(mods[a].c_attn, t)]
            pairs.append((f"{a}.c_proj", "weight"))
    return pairs


def _has(m: nn.Module, name: str) -> bool:
    return isinstance(getattr(m, name, None), torch.Tensor)


def _keep_count(n: int, amount: float) -> int:
    return n - min(round(amount * n), n - 1)  # at least one unit stays


def _unit_mask(norms: torch.Tensor, dead: torch.Tensor, amount: float) -> torch.Tensor:
    """1 for the units kept: the largest L2 norms (``ln_structured``), dead units ranked last."""
    scores = torch.where(dead, torch.full_like(norms, -1.0), norms)
    keep = torch.zeros_like(norms)
    keep[torch.topk(scores, _keep_count(len(norms), amount), largest=True).indices] = 1
    return keep


def _mask_rows(m: nn.Module, keep: torch.Tensor) -> None:
    for t in ("weight", "bias"):
        if _has(m, t):
            w = effective(m, t)
            set_mask(m, t, keep.view(-1, *([1] * (w.dim() - 1))).expand_as(w))


def _row_norms(m: nn.Module) -> torch.Tensor:
    return effective(m, "weight").flatten(1).norm(dim=1)


def _dead_units(m: nn.Module, bn: nn.Module | None) -> torch.Tensor:
    """True for units whose output is identically zero (weight row, bias, BN scale and shift)."""
    dead = effective(m, "weight").flatten(1).abs().sum(1) == 0
    for mod, t in ((m, "bias"), (bn, "weight"), (bn, "bias")):
        if mod is not None and _has(mod, t):
            dead &= effective(mod, t) == 0
    return dead


def _head_norms(m: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    """(L2 norm of each head's q/k/v rows and c_proj columns, heads whose output is zero)."""
    w, p = effective(m.c_attn, "weight"), effective(m.c_proj, "weight")
    b = effective(m.c_attn, "bias") if _has(m.c_attn, "bias") else None
    hd, norms, dead = head_dim(m), [], []
    for h in range(m.n_head):
        rows = torch.cat([w[s] for s in _head_slices(m, h)])
        cols = p[:, h * hd : (h + 1) * hd]
        norms.append((rows.square().sum() + cols.square().sum()).sqrt())
        v = _head_slices(m, h)[2]
        dead_v = w[v].abs().sum() == 0 and (b is None or b[v].abs().sum() == 0)
        dead.append(bool(dead_v or cols.abs().sum() == 0))
    return torch.stack(norms), torch.tensor(dead)


def _mask_heads(m: nn.Module, keep: torch.Tensor) -> None:
    hd = head_dim(m)
    per_dim = keep.repeat_interleave(hd)  # (n_embd,)
    rows = per_dim.repeat(3)  # q | k | v
    w = effective(m.c_attn, "weight")
    set_mask(m.c_attn, "weight", rows[:, None].expand_as(w))
    if _has(m.c_attn, "bias"):
        set_mask(m.c_attn, "bias", rows)
    p = effective(m.c_proj, "weight")
    set_mask(m.c_proj, "weight", per_dim[None, :].expand_as(p))


def prune_structured(
    model: nn.Module, amount: float, exclude: tuple[str, ...] = ()
) -> dict[str, int]:
    """Mask ``amount`` of each group's units (smallest L2 norm) and of each attention layer's
    heads; returns units kept per producer (at least one stays). ConfigError without units."""
    from bigtrain.compress.prune import _excluded

    amount = check_amount(amount)
    mods = dict(model.named_modules())
    groups = [g for g in find_groups(model) if not _excluded(g.producer, exclude)]
    heads = [a for a in attention_modules(model) if not _excluded(a, exclude)]
    if not groups and not heads:
        raise ConfigError(
            f"{type(model).__name__} has no units structured pruning can remove (conv channels "
            "or hidden neurons feeding one next layer, attention heads); use unstructured pruning"
        )
    kept: dict[str, int] = {}
    for g in groups:
        prod, bn = mods[g.producer], mods[g.bn] if g.bn else None
        keep = _unit_mask(_row_norms(prod), _dead_units(prod, bn), amount)
        _mask_rows(prod, keep)
        if bn is not None:
            _mask_rows(bn, keep)
        kept[g.producer] = int(keep.sum())
    for a in heads:
        norms, dead = _head_norms(mods[a])
        keep = _unit_mask(norms, dead.to(norms.device), amount)
        _mask_heads(mods[a], keep)
        kept[a] = int(keep.sum())
    return kept


# ----- removing the pruned units ---------------------------------------------------------


def _shrink(m: nn.Module, out: list[int] | None, inp: list[int] | None) -> nn.Module:
    """A copy of a Linear/Conv/BatchNorm with only the ``out`` units and ``inp`` inputs."""
    w = m.weight.detach()
    o = torch.tensor(out, device=w.device) if out is not None else None
    i = torch.tensor(inp, device=w.device) if inp is not None else None
    kw = {"device": w.device, "dtype": w.dtype}
    if isinstance(m, _BatchNorm):
        new = type(m)(len(out), m.eps, m.momentum, m.affine, m.track_running_stats, **kw)
        with torch.no_grad():
            for name, t in [*new.named_parameters(), *new.named_buffers()]:
                src = getattr(m, name)
                t.copy_(src if src.dim() == 0 else src[o])
        return new.train(m.training)
    if o is not None:
        w = w[o]
    if i is not None:
        w = w[:, i]
    bias = m.bias.detach()[o] if m.bias is not None and o is not None else m.bias
    if isinstance(m, nn.Linear):
        new = nn.Linear(w.shape[1], w.shape[0], bias=m.bias is not None, **kw)
    elif isinstance(m, _CONV):
        if i is not None and m.groups != 1:
            raise CheckpointError("cannot slice the inputs of a grouped convolution")
        new = type(m)(
            w.shape[1], w.shape[0], m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
            m.bias is not None, m.padding_mode, **kw,
        )  # fmt: skip
    else:
        raise CheckpointError(f"cannot shrink a {type(m).__name__}")
    with torch.no_grad():
        new.weight.copy_(w)
        if bias is not None:
            new.bias.copy_(bias)
    new.train(m.training)
    return new


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _apply_plan(model: nn.Module, plan: dict[str, dict[str, list[int]]]) -> None:
    for name, entry in plan.items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"variant.json shrinks '{name}', which the model lacks") from None
        if "heads" in entry:
            if not is_attention(m) or not hasattr(m, "head_dim"):
                raise CheckpointError(f"variant.json removes heads of '{name}', not an attention")
            hd, heads = m.head_dim, entry["heads"]
            rows = [s * m.n_embd + h * hd + d for s in range(3) for h in heads for d in range(hd)]
            cols = [h * hd + d for h in heads for d in range(hd)]
            m.c_attn = _shrink(m.c_attn, rows, None)
            m.c_proj = _shrink(m.c_proj, None, cols)
            m.n_head, m.n_embd = len(heads), len(heads) * hd
        else:
            _replace(model, name, _shrink(m, entry.get("out"), entry.get("in")))


def removal_plan(model: nn.Module) -> dict[str, dict[str, list[int]]]:
    """Which units and inputs each layer keeps once the units with zero output go."""
    mods = dict(model.named_modules())
    plan: dict[str, dict[str, list[int]]] = {}
    for g in find_groups(model):
        prod, bn = mods[g.producer], mods[g.bn] if g.bn else None
        keep = (~_dead_units(prod, bn)).nonzero().flatten().tolist()
        if len(keep) == len(_row_norms(prod)):
            continue
        plan.setdefault(g.producer, {})["out"] = keep
        if g.bn:
            plan.setdefault(g.bn, {})["out"] = keep
        cols = [c * g.spatial + s for c in keep for s in range(g.spatial)]
        plan.setdefault(g.consumer, {})["in"] = cols
    for a in attention_modules(model):
        m = mods[a]
        _, dead = _head_norms(m)
        keep = (~dead).nonzero().flatten().tolist()
        if len(keep) < m.n_head and hasattr(m, "head_dim"):
            plan[a] = {"heads": keep or [0]}
    return plan


def remove_pruned_units(model: nn.Module) -> tuple[nn.Module, dict[str, Any]]:
    """Fold the masks in and rebuild the layers without their zero-output units.

    Returns the smaller model and the variant step (``kind: prune_structured``) that lets
    ``restore_structure`` rebuild the same structure from the config-built model. Attention
    modules that compute their head size from the input width (no ``head_dim``) keep their
    pruned heads as zeros.
    """
    plan = removal_plan(model)
    make_permanent(model)
    _apply_plan(model, plan)
    return model, {"kind": "prune_structured", "modules": plan}


def restore_structure(model: nn.Module, step: dict[str, Any]) -> nn.Module:
    """Rebuild the layers a ``prune_structured`` step shrank, so the variant's weights load
    strictly (the values are overwritten by that load)."""
    plan = step.get("modules")
    if not isinstance(plan, dict):
        raise CheckpointError("variant.json: a prune_structured step without 'modules'")
    for name in plan:
        try:
            m = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"variant.json shrinks '{name}', which the model lacks") from None
        for sub in m.modules():  # build-time masks of the recipe's prune: section go first
            for t in ("weight", "bias"):
                if is_masked(sub, t):
                    torch.nn.utils.prune.remove(sub, t)
    try:
        _apply_plan(model, plan)
    except (IndexError, RuntimeError, TypeError) as e:
        raise CheckpointError(f"variant.json does not fit this model ({e})") from None
    return model
