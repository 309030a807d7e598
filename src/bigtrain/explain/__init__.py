"""Attributions (Captum) as plain functions on any ``nn.Module`` + tensors, and their figures.

``attribute(model, inputs, method)`` explains the model's outputs feature by feature;
``global_importance`` summarises a sample; ``figures`` draws them. ``bigtrain explain`` is the
thin command-line adapter (bigtrain.cli.explain_cmd). Captum is imported only when attributing.
"""

from __future__ import annotations

from .attribution import (
    COMPLETE_METHODS,
    GRADIENT_METHODS,
    METHODS,
    PERTURBATION_METHODS,
    Attributions,
    Scores,
    attribute,
    captum_attr,
    check_method,
    default_samples,
    find_embedding,
    patch_mask,
    resolve_targets,
)
from .outputs import Subject, write_explanation
from .summary import compare_importance, global_importance, mask_share, token_importance

__all__ = [
    "COMPLETE_METHODS",
    "GRADIENT_METHODS",
    "METHODS",
    "PERTURBATION_METHODS",
    "Attributions",
    "Scores",
    "Subject",
    "attribute",
    "captum_attr",
    "check_method",
    "compare_importance",
    "default_samples",
    "find_embedding",
    "global_importance",
    "mask_share",
    "patch_mask",
    "resolve_targets",
    "token_importance",
    "write_explanation",
]
