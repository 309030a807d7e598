"""DP-SGD's pieces that know Opacus: layer checks, per-example gradients, the noisy optimizer.

Plain functions on any ``nn.Module`` and optimizer; ``bigtrain.build.privacy`` wires them into
a run. Opacus is imported inside the functions (``pip install 'bigtrain[privacy]'``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from bigtrain.core.task import Backward, StepOutput, Task, TaskWrapper
from bigtrain.errors import ConfigError
from bigtrain.privacy.accountant import require_opacus

# what ModuleValidator.fix puts in place of each layer it replaces
_REPLACEMENTS = {
    "BatchNorm1d": "GroupNorm",
    "BatchNorm2d": "GroupNorm",
    "BatchNorm3d": "GroupNorm",
    "SyncBatchNorm": "GroupNorm",
    "LSTM": "Opacus' DPLSTM",
    "GRU": "Opacus' DPGRU",
    "RNN": "Opacus' DPRNN",
    "MultiheadAttention": "Opacus' DPMultiheadAttention",
    "InstanceNorm1d": "InstanceNorm1d without running stats",
    "InstanceNorm2d": "InstanceNorm2d without running stats",
    "InstanceNorm3d": "InstanceNorm3d without running stats",
}
_WHY = {
    "GroupNorm": "it normalises each example with statistics of the whole batch",
}


def unsupported_layers(model: nn.Module) -> list[tuple[str, nn.Module, Exception]]:
    """``(name, layer, error)`` of every layer Opacus' ``ModuleValidator`` refuses.

    Every module is checked, trainable or not: a BatchNorm without affine weights still mixes
    the batch's examples (and leaks them through its running statistics).
    """
    require_opacus()
    from opacus.validators import ModuleValidator

    found = []
    for name, module in model.named_modules():
        validator = ModuleValidator.VALIDATORS.get(type(module))
        if validator is not None:
            found.extend((name or "(the model)", module, e) for e in validator(module))
    return found


def refusal(
    layers: Sequence[tuple[str, nn.Module, Exception]],
    model_fields: dict[str, Any],
    fixed: bool = False,
) -> str:
    """One line naming the first layer DP-SGD cannot train and how to get rid of it."""
    name, module, _ = layers[0]
    kind = type(module).__name__
    others = f" (and {len(layers) - 1} more layer{'s' if len(layers) > 2 else ''})"
    where = f"layer '{name}' ({kind}){others if len(layers) > 1 else ''}"
    if fixed:
        return f"privacy: {where} cannot be trained with DP-SGD even after privacy.fix_modules"
    replacement = _REPLACEMENTS.get(kind, "Opacus' replacement")
    why = _WHY.get(replacement, "its per-example gradients cannot be computed")
    fixes = []
    if replacement == "GroupNorm":
        if "norm" in model_fields:
            fixes.append("model.norm=group")
        elif model_fields.get("batch_norm"):
            fixes.append("model.batch_norm=false")
    fixes.append(f"privacy.fix_modules=true (replaces it with {replacement})")
    return f"privacy: {where} cannot be trained with DP-SGD: {why}; set {' or '.join(fixes)}"


def make_private_model(
    model: nn.Module, fix_modules: bool, model_fields: dict[str, Any] | None = None
) -> nn.Module:
    """Check (and with ``fix_modules`` fix) the layers, then attach per-example gradients.

    Returns the model itself (or Opacus' fixed copy) with ``GradSampleHooks`` attached: the
    hooks fill ``p.grad_sample`` during backward without wrapping the module, so parameter
    names, checkpoints and ``bigtrain eval`` stay those of the plain model.

    Raises:
        ConfigError: a layer DP-SGD cannot train, named with its fixes.
    """
    require_opacus()
    from opacus.grad_sample import GradSampleHooks
    from opacus.validators import ModuleValidator

    fields = model_fields or {}
    bad = unsupported_layers(model)
    if bad and fix_modules:
        model = ModuleValidator.fix(model)
        bad = unsupported_layers(model)
        if bad:
            raise ConfigError(refusal(bad, fields, fixed=True))
    elif bad:
        raise ConfigError(refusal(bad, fields))
    # torch warns once that the first layer's backward hook sees no input gradient: the
    # data needs none, and Opacus reads the layer's output gradient
    warnings.filterwarnings("ignore", "Full backward hook is firing when gradients", UserWarning)
    model._bigtrain_grad_sampler = GradSampleHooks(  # kept alive with the model
        model, batch_first=True, loss_reduction="mean", strict=False
    )
    return model


def disable_per_example_gradients(model: nn.Module) -> None:
    """Remove the per-example gradient hooks ``make_private_model`` attached (they only serve
    DP-SGD training, and fail on a backward pass in eval mode, e.g. attributions)."""
    hooks = getattr(model, "_bigtrain_grad_sampler", None)
    if hooks is not None:
        hooks.disable_hooks()


def make_dp_optimizer(
    optimizer: torch.optim.Optimizer,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
) -> torch.optim.Optimizer:
    """Opacus' ``DPOptimizer`` around ``optimizer``: clip each example's gradient to
    ``max_grad_norm``, sum, add ``N(0, (noise_multiplier * max_grad_norm)^2)`` noise and divide
    by ``expected_batch_size`` (not the drawn batch's size: that would leak it)."""
    require_opacus()
    from opacus.optimizers import DPOptimizer

    return DPOptimizer(
        optimizer,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
        loss_reduction="mean",
    )


def _batch_len(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (tuple, list)) else batch
    if isinstance(batch, dict):
        first = next(iter(batch.values()))
    return int(first.shape[0])


class DPTask(TaskWrapper):
    """The inner task, with the empty batches Poisson sampling draws handled as Opacus does.

    An empty batch has no loss to backpropagate: its per-example gradients are set to empty
    tensors, so the DP optimizer's update is the noise alone (divided by the expected batch
    size), and its loss counts as 0.
    """

    def __init__(self, inner: Task, params: Sequence[nn.Parameter]) -> None:
        super().__init__(inner)
        self.params = [p for p in params if p.requires_grad]

    def forward_backward(
        self, model: nn.Module, batch: Any, scale: float, backward: Backward
    ) -> StepOutput:
        if _batch_len(batch) == 0:
            for p in self.params:
                p.grad_sample = p.new_zeros((0, *p.shape))
            device = self.params[0].device if self.params else None
            return StepOutput(loss=torch.zeros((), device=device), n=0)
        return self.inner.forward_backward(model, batch, scale, backward)
