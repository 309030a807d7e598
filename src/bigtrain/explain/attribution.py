"""Attributions of any ``nn.Module``'s outputs to its inputs, computed by Captum.

``attribute(model, inputs, method, ...)`` runs one Captum method (nothing is re-implemented
here) and returns an :class:`Attributions`: one score per input feature, the explained target,
the model's outputs and, for the methods with a completeness property, the gap
``sum(attributions) - (f(x) - f(baseline))``. Models that read integer token ids are explained
on the output of their embedding layer (the gradient methods; for ig this is Captum's
LayerIntegratedGradients) or by replacing ids with the baseline id (occlusion, KernelSHAP, LIME). Captum is imported lazily: ``pip install 'bigtrain[explain]'``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from bigtrain.errors import ConfigError, did_you_mean

METHODS = ("ig", "gradient_shap", "saliency", "occlusion", "kernel_shap", "lime")
#: methods that differentiate the model with respect to its input
GRADIENT_METHODS = ("ig", "gradient_shap", "saliency")
#: methods that only evaluate the model on perturbed inputs
PERTURBATION_METHODS = ("occlusion", "kernel_shap", "lime")
#: methods whose attributions add up to f(x) - f(baseline) (gradient_shap in expectation)
COMPLETE_METHODS = ("ig", "gradient_shap", "kernel_shap")
INSTALL = "pip install 'bigtrain[explain]'"


def check_method(method: str) -> str:
    """``method`` if it is one of METHODS, else ConfigError with a suggestion."""
    if method not in METHODS:
        raise ConfigError(
            f"unknown attribution method '{method}'{did_you_mean(method, METHODS)}; choose "
            f"from {', '.join(METHODS)}"
        )
    return method


def captum_attr():
    """The ``captum.attr`` module, or ConfigError naming the pip line."""
    try:
        import captum.attr
    except ImportError:
        raise ConfigError(f"attributions need Captum: {INSTALL}") from None
    return captum.attr


@dataclass
class Attributions:
    """What one attribution run produced (tensors on the CPU).

    ``values`` has the shape of the inputs; for token ids it is (N, T): the embedding layer's
    attributions summed over the embedding dimension, so they still add up. ``gap`` is
    ``sum(values) - (f(x) - f(reference))`` per example for COMPLETE_METHODS (else None), where
    the reference is the baseline (token inputs: the baseline's embeddings under the input's own
    padding mask, the start of the path the layer methods integrate along).
    """

    method: str
    values: torch.Tensor
    targets: torch.Tensor  # (N,) explained output index per example
    outputs: torch.Tensor  # (N, K) model outputs at the inputs
    reference_outputs: torch.Tensor  # (N, K) outputs at the reference (baseline)
    gap: torch.Tensor | None = None
    settings: dict = field(default_factory=dict)


class Scores(nn.Module):
    """A model's outputs as (N, K) scores one can index by class.

    ``two_sided`` turns a binary model's single logit z (log-odds of class 1) into the columns
    (-z, z): class 0 is explained as the log-odds of class 0, class 1 as z itself.
    ``flatten`` feeds a model trained on flat rows from image-shaped inputs (N, C, H, W).
    """

    def __init__(self, model: nn.Module, two_sided: bool = False, flatten: bool = False) -> None:
        super().__init__()
        self.model, self.two_sided, self.flatten = model, two_sided, flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x.flatten(1) if self.flatten else x)
        out = out.float()
        if out.ndim == 1:
            out = out[:, None]
        return torch.cat([-out, out], dim=1) if self.two_sided else out


class _IdsFromFloat(nn.Module):
    """Token ids carried as floats (perturbation methods mix inputs and baselines
    arithmetically with 0/1 masks, so the values stay whole ids) and turned back into ids."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.round().long())


def find_embedding(model: nn.Module) -> nn.Embedding | None:
    """The first ``nn.Embedding`` of a model (the token embedding of bigtrain's text models)."""
    return next((m for m in model.modules() if isinstance(m, nn.Embedding)), None)


def patch_mask(shape: Sequence[int], patch: int) -> torch.Tensor:
    """Superpixel feature mask for one (C, H, W) image: square ``patch`` x ``patch`` blocks
    numbered row by row, the same block across channels. Returns a LongTensor of ``shape``."""
    if len(shape) != 3 or patch < 1:
        raise ConfigError(
            f"patch masks need a (C, H, W) shape and patch >= 1, got {shape}, {patch}"
        )
    _, h, w = shape
    rows = torch.arange(h)[:, None] // patch
    cols = torch.arange(w)[None, :] // patch
    blocks = rows * math.ceil(w / patch) + cols  # (H, W)
    return blocks.expand(*shape).clone()


def resolve_targets(outputs: torch.Tensor, target: int | Sequence[int] | torch.Tensor | None):
    """(N,) output indices: the argmax of each row when ``target`` is None; ConfigError when an
    index is outside 0..K-1."""
    n, k = outputs.shape
    if target is None:
        return outputs.argmax(dim=1)
    t = torch.as_tensor(target, dtype=torch.long).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n).clone()
    if t.numel() != n:
        raise ConfigError(f"{t.numel()} targets given for {n} inputs")
    bad = t[(t < 0) | (t >= k)]
    if bad.numel():
        raise ConfigError(
            f"target {int(bad[0])} is out of range: the model has {k} outputs (0..{k - 1})"
        )
    return t


def _expand(baseline, inputs: torch.Tensor) -> torch.Tensor:
    b = torch.as_tensor(baseline, dtype=inputs.dtype, device=inputs.device)
    if b.ndim == inputs.ndim - 1:
        b = b[None]
    return b.expand_as(inputs).clone()


def _check_applies(method: str, ids: bool, layer: nn.Module | None) -> None:
    if ids and method in GRADIENT_METHODS and layer is None:
        raise ConfigError(
            f"method '{method}' needs a differentiable input, but this model reads integer ids "
            f"and has no nn.Embedding layer; methods that apply: {', '.join(PERTURBATION_METHODS)}"
        )


def default_samples(method: str, n_features: int) -> int:
    """Model evaluations per example: 50 gradient samples for gradient_shap, and for
    KernelSHAP/LIME 200 + 10 per feature (capped at 2000), enough for the regression to settle."""
    if method == "gradient_shap":
        return 50
    return min(2000, 200 + 10 * n_features)


def attribute(
    model: nn.Module,
    inputs: torch.Tensor,
    method: str,
    target: int | Sequence[int] | torch.Tensor | None = None,
    baseline: float | torch.Tensor | None = None,
    *,
    layer: nn.Module | None = None,
    feature_mask: torch.Tensor | None = None,
    window: Sequence[int] | None = None,
    n_steps: int = 64,
    n_samples: int | None = None,
    seed: int = 0,
) -> Attributions:
    """Attribute ``model(inputs)[:, target]`` to the input features with a Captum method.

    Args:
        model: returns (N, K) scores (wrap other outputs with :class:`Scores`).
        inputs: (N, ...) float features, or (N, T) integer token ids.
        method: one of METHODS.
        target: output index per example (int, sequence or tensor); None = the argmax.
        baseline: the reference input, broadcast to ``inputs`` (one example or a scalar);
            None = zeros. For token ids, the reference token id (e.g. the pad id); required.
        layer: for token ids, the layer whose output the gradient methods attribute to
            (default: the first nn.Embedding).
        feature_mask: groups of features perturbed together by kernel_shap/lime (one
            example's shape, integer group ids, e.g. :func:`patch_mask`); default: each feature.
        window: occlusion's sliding window (one example's shape); default: one feature.
        n_steps: integration steps of ig.
        n_samples: random samples of gradient_shap, kernel_shap and lime (see default_samples).
        seed: seeds the sampling methods (the global RNG is left as it was).
    """
    check_method(method)
    attr = captum_attr()
    ids = not inputs.is_floating_point()
    if ids and layer is None and method in GRADIENT_METHODS:
        layer = find_embedding(model)
    _check_applies(method, ids, layer)
    if ids and baseline is None:
        raise ConfigError("token inputs need a baseline token id (e.g. the pad id)")
    was_training = model.training
    model.eval()  # no dropout, batch-norm running statistics: a deterministic function
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    x = inputs.to(device)
    base = _expand(0 if baseline is None else baseline, x)
    try:
        with torch.no_grad():
            outputs = model(x).float()
            on_layer = layer if ids and method in GRADIENT_METHODS else None
            reference = _reference_outputs(model, x, base, on_layer)
        targets = resolve_targets(outputs, target).to(device)
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            values, settings = _run(
                attr, model, x, base, method, targets, ids, layer, feature_mask, window,
                n_steps, n_samples,
            )  # fmt: skip
    finally:
        model.train(was_training)
    values = values.detach().float()
    if values.ndim == x.ndim + 1:  # layer attributions (N, T, E): one score per token
        values = values.sum(-1)
    gap = None
    if method in COMPLETE_METHODS:
        rows = torch.arange(len(x), device=device)
        change = outputs[rows, targets] - reference[rows, targets]
        gap = (values.flatten(1).sum(1) - change).cpu()
    return Attributions(
        method, values.cpu(), targets.cpu(), outputs.cpu(), reference.cpu(), gap, settings
    )


def _reference_outputs(
    model: nn.Module, x: torch.Tensor, base: torch.Tensor, layer: nn.Module | None
) -> torch.Tensor:
    """Outputs at the start of the attribution path: f(baseline), or for a layer the model on
    ``x`` with the layer's output replaced by its output on the baseline (so a padding mask
    computed from the ids stays the input's, as it does along Captum's layer path)."""
    if layer is None:
        return model(base).float()
    ref = layer(base)
    handle = layer.register_forward_hook(lambda module, args, out: ref)
    try:
        return model(x).float()
    finally:
        handle.remove()


def _mask_without_dummies(x: torch.Tensor, base: torch.Tensor):
    """One group per feature, except the features already equal to the baseline (padding of a
    passage, say), which no perturbation can change: they join the first other feature's
    group, so the surrogate spends no samples or weight on them. Returns (mask, dummy mask)."""
    dummy = x == base
    mask = torch.cumsum((~dummy).reshape(-1).long(), 0).reshape(x.shape) - 1
    return torch.where(dummy, torch.zeros_like(mask), mask.clamp(min=0)), dummy


class _OnLayer(nn.Module):
    """``forward(h, ids)``: the model on ``ids`` with ``layer``'s output replaced by ``h``, so
    input-space gradient methods attribute to the embeddings of a model that reads ids.
    (Captum's LayerIntegratedGradients computes the same for ig; its LayerGradientShap
    interpolates the ids themselves, which integer ids cannot be.)"""

    def __init__(self, model: nn.Module, layer: nn.Module) -> None:
        super().__init__()
        self.model, self.layer = model, layer

    def forward(self, h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        handle = self.layer.register_forward_hook(lambda module, args, out: h)
        try:
            return self.model(ids)
        finally:
            handle.remove()


def _binary_cosine_kernel(original, perturbed, interpretable, **kwargs) -> torch.Tensor:
    """LIME's text and image weighting: exp(-d²/0.25²), d the cosine distance between the
    sample's on/off vector of features and all-on (the input itself). Distances between
    token ids or superpixel pixels in input space would mean little."""
    z = interpretable.float().flatten()
    cos = z.sum() / (z.numel() ** 0.5 * z.norm().clamp(min=1e-12))
    return torch.exp(-((1 - cos) ** 2) / 0.25**2)


def _run(
    attr, model, x, base, method, targets, ids, layer, feature_mask, window, n_steps, n_samples
):
    """Captum's call for ``method``: (attributions, the settings used)."""
    n_features = x[0].numel() if feature_mask is None else int(feature_mask.max()) + 1
    n = n_samples or default_samples(method, n_features)
    if method in GRADIENT_METHODS:
        return _gradient(attr, model, x, base, method, targets, layer if ids else None, n_steps, n)
    forward = _IdsFromFloat(model) if ids else model
    xf, bf = (x.float(), base.float()) if ids else (x, base)
    if method == "occlusion":
        shape = tuple(window) if window is not None else (1,) * (x.ndim - 1)
        values = attr.Occlusion(forward).attribute(
            xf, sliding_window_shapes=shape, baselines=bf, target=targets,
            perturbations_per_eval=64,
        )  # fmt: skip
        if all(w == 1 for w in shape):
            # occluding a feature that already equals the baseline changes nothing, so its
            # attribution is 0 by definition; batched kernels would leave ~1e-8 of rounding
            values = torch.where(xf == bf, torch.zeros_like(values), values)
        return values, {"window": list(shape)}
    if method == "kernel_shap":
        explainer = attr.KernelShap(forward)
        settings: dict = {"n_samples": n}
    else:
        from captum._utils.models.linear_model import SkLearnRidge

        # Captum's default LIME surrogate is a Lasso, which gave all-zero attributions on small
        # models: a ridge regression keeps every feature
        binary = ids or feature_mask is not None
        explainer = attr.Lime(
            forward,
            interpretable_model=SkLearnRidge(alpha=0.01),
            similarity_func=_binary_cosine_kernel if binary else None,
        )
        settings = {
            "n_samples": n,
            "surrogate": "ridge(alpha=0.01)",
            "similarity": "exp(-d²/0.25²) of the on/off features' cosine distance"
            if binary
            else "Captum's default (exp(-d²), d the inputs' cosine distance)",
        }
    rows = []
    for i in range(len(x)):  # one surrogate per example (Captum warns on batches)
        if feature_mask is None:
            mask, dummy = _mask_without_dummies(xf[i], bf[i])
        else:
            mask, dummy = feature_mask.to(x.device), None
        row = explainer.attribute(
            xf[i : i + 1], baselines=bf[i : i + 1], target=targets[i : i + 1],
            feature_mask=mask[None], n_samples=n, perturbations_per_eval=min(n, 128),
        )[0]  # fmt: skip
        if dummy is not None:
            row[dummy] = 0.0  # replacing them by the baseline changes nothing: worth exactly 0
        else:  # Captum gives each feature its group's value: share it out, so values add up
            sizes = torch.bincount(mask.reshape(-1))[mask]
            row = row / sizes
        rows.append(row)
    return torch.stack(rows), settings


def _gradient(attr, model, x, base, method, targets, layer, n_steps, n_samples):
    """ig, gradient_shap or saliency on the inputs, or with ``layer`` on its outputs."""
    forward, extra = (_OnLayer(model, layer), (x,)) if layer is not None else (model, None)
    if layer is not None:  # attribute to the embeddings: the input and baseline as layer outputs
        with torch.no_grad():
            x, base = layer(x).detach(), layer(base).detach()
    if method == "ig":
        values = attr.IntegratedGradients(forward).attribute(
            x, baselines=base, target=targets, additional_forward_args=extra,
            n_steps=n_steps, internal_batch_size=4 * n_steps,
        )  # fmt: skip
        return values, {"n_steps": n_steps}
    if method == "gradient_shap":
        # one reference: a Monte-Carlo estimate of IG along the straight path (random alphas)
        values = attr.GradientShap(forward).attribute(
            x, baselines=base[:1], target=targets, n_samples=n_samples,
            additional_forward_args=extra,
        )  # fmt: skip
        return values, {"n_samples": n_samples}
    x = x.clone().requires_grad_(True)  # Captum warns when it has to do this itself
    values = attr.Saliency(forward).attribute(
        x, target=targets, abs=True, additional_forward_args=extra
    )
    return values, {"abs": True}
