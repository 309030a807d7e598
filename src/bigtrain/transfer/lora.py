"""LoRA adapters through peft, as plain functions on any nn.Module (docs/transfer.md).

``add_lora`` injects low-rank adapters into the model's Linear layers *in place* (peft's
``inject_adapter_in_model``), so the model keeps its own class and ``forward``: a GPT stays a GPT
(its KV cache, FLOP count and generation still work), a SmolLM2 stays a SmolLM2. Only the adapter
matrices are trainable afterwards. Parameter names gain peft's infixes
(``transformer.h.0.attn.c_attn.base_layer.weight``, ``...c_attn.lora_A.default.weight``), so a
checkpoint of a LoRA run loads into the same model with the same adapters added. ``merge_lora``
folds ``W + (alpha / r) * B @ A`` back into each Linear and returns the plain model, whose
parameter names are the original ones again.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
from collections.abc import Iterator, Sequence
from typing import NamedTuple

from torch import nn

from bigtrain.errors import ConfigError

INSTALL = "pip install 'bigtrain[transfer]'"
#: output heads never adapted by default (tied to the token embedding in GPT and SmolLM2)
OUTPUT_HEADS = ("lm_head",)

__all__ = [
    "LoraShare",
    "add_lora",
    "default_target_modules",
    "has_lora",
    "linear_names",
    "lora_parameter_share",
    "merge_lora",
]


class LoraShare(NamedTuple):
    """Trainable parameters, all parameters (adapters included, tied ones once), and their ratio."""

    trainable: int
    total: int
    share: float


@contextlib.contextmanager
def quiet_torchao(*also: str) -> Iterator[None]:
    """Silence torchao's import-time warnings meanwhile (and the loggers named in ``also``).

    peft and transformers import torchao (now or lazily later) when it is installed, which logs
    warnings about optional CUDA kernels; they say nothing about the run.
    """
    noisy = [logging.getLogger(n) for n in (*also, "torchao", "torch.utils._pytree")]
    levels = [lg.level for lg in noisy]
    try:
        for lg in noisy:
            lg.setLevel(logging.ERROR)
        yield
    finally:
        for lg, level in zip(noisy, levels, strict=True):
            lg.setLevel(level)


def import_quietly(name: str):
    """``importlib.import_module(name)`` inside ``quiet_torchao``."""
    with quiet_torchao():
        return importlib.import_module(name)


def _peft():
    try:
        return import_quietly("peft")
    except ImportError:
        raise ConfigError(f"lora: needs the 'peft' package: {INSTALL}") from None


def linear_names(model: nn.Module) -> list[str]:
    """The distinct last names of the model's nn.Linear layers (``c_attn``, ``q_proj``...)."""
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if type(m) is nn.Linear}
    return sorted(names)


def default_target_modules(model: nn.Module) -> list[str]:
    """Every Linear layer name except the output head (``lm_head``)."""
    return [n for n in linear_names(model) if n not in OUTPUT_HEADS]


def has_lora(model: nn.Module) -> bool:
    """True when ``model`` holds LoRA layers (``add_lora`` was applied and not merged)."""
    return any(".lora_A." in name for name, _ in model.named_parameters())


def add_lora(
    model: nn.Module,
    r: int = 8,
    alpha: float = 16.0,
    dropout: float = 0.0,
    target_modules: Sequence[str] | None = None,
) -> nn.Module:
    """Add LoRA adapters to ``model``'s Linear layers in place and freeze everything else.

    Args:
        model: any nn.Module.
        r: rank of each adapter (``B @ A`` with A: (r, in), B: (out, r)); B starts at zero, so
            the adapted model computes exactly what ``model`` did.
        alpha: scale numerator: the update is ``(alpha / r) * B @ A``.
        dropout: dropout on each adapter's input (training only).
        target_modules: last names of the Linear layers to adapt (``["c_attn", "c_proj"]``);
            None = every Linear layer except the output head.

    Returns:
        ``model`` itself, with only the adapter parameters requiring gradients.

    Raises:
        ConfigError: bad rank, a target matching no Linear layer, or peft missing.
    """
    if r < 1:
        raise ConfigError(f"lora.r: must be >= 1, got {r}")
    if has_lora(model):
        raise ConfigError("lora: the model already has LoRA adapters")
    available = linear_names(model)
    targets = list(default_target_modules(model) if target_modules is None else target_modules)
    missing = [t for t in targets if t not in available]
    if missing or not targets:
        verb = "matches" if len(missing) == 1 else "match"
        what = f"{', '.join(map(repr, missing))} {verb}" if missing else "an empty list matches"
        raise ConfigError(
            f"lora.target_modules: {what} no Linear layer; the model's Linear layers are: "
            f"{', '.join(available) or 'none'}"
        )
    peft = _peft()
    config = peft.LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none"
    )
    model = peft.inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():  # peft freezes the base already; make it certain
        p.requires_grad_(".lora_" in name)
    return model


def lora_parameter_share(model: nn.Module) -> LoraShare:
    """How many of ``model``'s parameters train (tied and shared tensors counted once)."""
    params = list(model.parameters())  # parameters() yields each tensor once
    trainable = sum(p.numel() for p in params if p.requires_grad)
    total = sum(p.numel() for p in params)
    return LoraShare(trainable, total, trainable / total if total else 0.0)


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its Linear layer and return the plain model (in place).

    The merged Linear computes ``x @ (W + (alpha / r) * B @ A).T + b``, equal to the adapted
    layer up to float rounding; parameter names lose peft's infixes and every parameter
    requires gradients again (a plain model).

    Raises:
        ConfigError: the model has no LoRA adapters.
    """
    if not has_lora(model):
        raise ConfigError("the model has no LoRA adapters to merge")
    from peft.tuners.lora import LoraLayer

    # collect first: replacing modules while iterating named_modules would skip some
    layers = [(name, m) for name, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in layers:
        layer.merge()
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    for p in model.parameters():
        p.requires_grad_(True)
    return model
