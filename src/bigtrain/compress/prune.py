"""Magnitude pruning as plain functions on any ``nn.Module`` (docs/pruning.md).

Masks use ``torch.nn.utils.prune``'s reparametrisation: a masked ``weight`` is stored as the
parameter ``weight_orig`` and the buffer ``weight_mask`` (both in ``state_dict``, so a checkpoint
keeps the masks and a resumed run continues with them) and ``module.weight`` is recomputed as
their product before each forward. ``make_permanent`` folds the masks in (plain ``weight`` again,
zeros kept). Structured pruning (whole channels, neurons, attention heads) and the removal of
pruned units are in ``prune_structured``; ``restore_structure`` is re-exported here as the
variant restorer of ``bigtrain.build.variant``.

The amount is always the target sparsity of the selected tensors (0.5: half of them zero),
counting what earlier pruning already removed: pruning a 30%-sparse model to 0.5 removes 20%
more, and units or weights once pruned stay pruned (they are ranked first).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from bigtrain.errors import CheckpointError, ConfigError

#: layers whose weights unstructured pruning targets (embeddings, norms and biases stay dense)
PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
SCOPES = ("global", "layer")


def check_amount(amount: float) -> float:
    """``amount`` if it is a sparsity in [0, 1), else ConfigError."""
    if not isinstance(amount, int | float) or not 0.0 <= float(amount) < 1.0:
        raise ConfigError(
            f"--amount must be in [0, 1) (the fraction of weights zeroed), got {amount}"
        )
    return float(amount)


def is_masked(module: nn.Module, name: str = "weight") -> bool:
    """True when ``module.<name>`` is reparametrised by a pruning mask."""
    return f"{name}_mask" in module._buffers and f"{name}_orig" in module._parameters


def effective(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    """The tensor the module computes with (``orig * mask`` when masked), detached."""
    if is_masked(module, name):
        return (module._parameters[f"{name}_orig"] * module._buffers[f"{name}_mask"]).detach()
    t = getattr(module, name, None)
    return t.detach() if isinstance(t, torch.Tensor) else None


def current_mask(module: nn.Module, name: str = "weight") -> torch.Tensor | None:
    return module._buffers[f"{name}_mask"] if is_masked(module, name) else None


def set_mask(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Mask ``module.<name>`` with ``mask`` (0/1, its shape), combined with any existing mask.

    An existing mask buffer is updated in place, so the state-dict names (and the optimizer's
    parameter) never change once a tensor is masked.
    """
    if is_masked(module, name):
        buf = module._buffers[f"{name}_mask"]
        buf.mul_(mask.to(buf))
    else:
        orig = getattr(module, name)
        torch_prune.custom_from_mask(module, name, mask.to(device=orig.device, dtype=orig.dtype))
    # refresh the computed attribute now (it is otherwise only recomputed at the next forward);
    # without autograd history, so the model stays deep-copyable
    with torch.no_grad():
        setattr(module, name, module._parameters[f"{name}_orig"] * module._buffers[f"{name}_mask"])


def add_identity_mask(module: nn.Module, name: str = "weight") -> None:
    """Reparametrise ``module.<name>`` with an all-ones mask (no-op when already masked)."""
    if not is_masked(module, name):
        torch_prune.identity(module, name)


def masked_names(model: nn.Module) -> list[str]:
    """``"<module>.<tensor>"`` of every masked tensor, in module order."""
    return [
        f"{mname}.{buf[: -len('_mask')]}" if mname else buf[: -len("_mask")]
        for mname, m in model.named_modules()
        for buf in list(m._buffers)
        if buf.endswith("_mask") and is_masked(m, buf[: -len("_mask")])
    ]


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every mask into its tensor (``prune.remove``): plain names again, zeros kept."""
    for name in masked_names(model):
        mname, _, tname = name.rpartition(".")
        torch_prune.remove(model.get_submodule(mname), tname)
    return model


def _shared(model: nn.Module) -> set[int]:
    """ids of parameters reachable under two names (tied weights such as GPT's lm_head)."""
    seen: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[id(p)] = seen.get(id(p), 0) + 1
    return {k for k, n in seen.items() if n > 1}


def _excluded(name: str, exclude: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, pat) for pat in exclude)


def prunable_layers(model: nn.Module, exclude: Sequence[str] = ()) -> list[tuple[str, nn.Module]]:
    """(name, module) of the Linear/Conv layers whose weight unstructured pruning may zero.

    Tied weights (an output layer sharing the embedding) and names matching an ``exclude``
    glob (``head.*``) are left out.
    """
    shared = _shared(model)
    out = []
    for name, m in model.named_modules():
        if not isinstance(m, PRUNABLE) or _excluded(name, exclude):
            continue
        w = m._parameters.get("weight_orig", m._parameters.get("weight"))
        if w is not None and id(w) not in shared:
            out.append((name, m))
    return out


def _scores(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """|weight| where unmasked, -1 where masked: already-pruned entries are ranked first."""
    w = effective(module, name).abs()
    mask = current_mask(module, name)
    return w if mask is None else torch.where(mask.bool(), w, torch.full_like(w, -1.0))


def smallest_mask(scores: torch.Tensor, amount: float) -> torch.Tensor:
    """0 at the ``round(amount * n)`` smallest scores, 1 elsewhere (torch's L1Unstructured rule)."""
    k = round(amount * scores.numel())
    mask = torch.ones_like(scores)
    if k:
        mask.view(-1)[torch.topk(scores.reshape(-1), k, largest=False).indices] = 0
    return mask


def prune_unstructured(
    model: nn.Module, amount: float, scope: str = "global", exclude: Sequence[str] = ()
) -> list[str]:
    """Zero the smallest-magnitude weights of every Linear/Conv layer; returns the layers' names.

    ``scope="global"`` ranks all the layers' weights together (torch's ``global_unstructured``
    with L1), so layers may end up unequally sparse; ``"layer"`` prunes ``amount`` of each
    layer (``l1_unstructured`` per layer).
    """
    amount = check_amount(amount)
    if scope not in SCOPES:
        raise ConfigError(f"--scope must be global or layer, got '{scope}'")
    layers = prunable_layers(model, exclude)
    if not layers:
        raise ConfigError("the model has no Linear or Conv layer to prune")
    if scope == "layer":
        for _, m in layers:
            set_mask(m, "weight", smallest_mask(_scores(m), amount))
    else:
        scores = [_scores(m) for _, m in layers]
        flat = smallest_mask(torch.cat([s.reshape(-1) for s in scores]), amount)
        pieces = flat.split([s.numel() for s in scores])
        for (_, m), s, piece in zip(layers, scores, pieces, strict=True):
            set_mask(m, "weight", piece.view(s.shape))
    return [name for name, _ in layers]


def sparsity_report(model: nn.Module) -> list[tuple[str, int, int, float]]:
    """(layer, params, zeros, sparsity) of each Linear/Conv weight and each masked weight."""
    rows = []
    shared = _shared(model)
    for name, m in model.named_modules():
        if not (isinstance(m, PRUNABLE) or is_masked(m, "weight")):
            continue
        raw = m._parameters.get("weight_orig", m._parameters.get("weight"))
        if raw is None or id(raw) in shared:
            continue
        w = effective(m, "weight")
        zeros = int((w == 0).sum())
        rows.append((name, w.numel(), zeros, zeros / max(w.numel(), 1)))
    return rows


def total_sparsity(rows: Iterable[tuple[str, int, int, float]]) -> float:
    """Zeros over parameters of a ``sparsity_report``."""
    rows = list(rows)
    params = sum(r[1] for r in rows)
    return sum(r[2] for r in rows) / params if params else 0.0


def report_dict(model: nn.Module) -> dict[str, Any]:
    """The sparsity report as JSON-ready data (summary.json's ``pruning.layers``)."""
    rows = sparsity_report(model)
    return {
        "sparsity": round(total_sparsity(rows), 6),
        "layers": [
            {"layer": n, "params": p, "zeros": z, "sparsity": round(s, 6)} for n, p, z, s in rows
        ],
    }


def cubic_sparsity(step: int, final: float, start: int, end: int, initial: float = 0.0) -> float:
    """Zhu & Gupta (2017): ``s_t = s_f + (s_i - s_f) * (1 - (t - t0) / (n dt)) ** 3``.

    ``initial`` before ``start``, ``final`` from ``end`` on (``n dt = end - start``).
    """
    if step < start:
        return initial
    if step >= end:
        return final
    return final + (initial - final) * (1.0 - (step - start) / (end - start)) ** 3


def restore_masks(model: nn.Module, step: dict[str, Any]) -> nn.Module:
    """Variant restorer (step ``prune_masks``): mask exactly the tensors the variant saved masked.

    Tensors listed but plain gain an all-ones mask (the saved mask then loads into it); tensors
    masked by the recipe's own ``prune:`` section but saved plain lose theirs.
    """
    wanted = set(step.get("masked", []))
    for name in masked_names(model):
        if name not in wanted:
            mname, _, tname = name.rpartition(".")
            torch_prune.remove(model.get_submodule(mname), tname)
    for name in sorted(wanted):
        mname, _, tname = name.rpartition(".")
        try:
            module = model.get_submodule(mname)
        except AttributeError:
            raise CheckpointError(f"variant.json masks '{name}', which the model lacks") from None
        if not isinstance(getattr(module, tname, None), torch.Tensor):
            raise CheckpointError(f"variant.json masks '{name}', which the model lacks")
        add_identity_mask(module, tname)
    return model


def restore_structure(model: nn.Module, step: dict[str, Any]) -> nn.Module:
    """Variant restorer (step ``prune_structured``); see ``prune_structured.restore_structure``."""
    from bigtrain.compress.prune_structured import restore_structure as restore

    return restore(model, step)
