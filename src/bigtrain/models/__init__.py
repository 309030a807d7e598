"""Models by name: ``MODELS`` registry plus ``build_model`` that validates recipe keys.

Every registered model is an ``nn.Module`` class with a ``Config`` dataclass attribute and a
``from_config(cfg, input_shape, num_outputs)`` classmethod; input shape and output size come from
the data, the rest from the recipe. The model files import only torch and the standard library;
this module is the adapter that adds registry lookup and pydantic validation.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Mapping
from typing import Any

import pydantic
from torch import nn

from bigtrain._registry import Registry
from bigtrain.errors import ConfigError, did_you_mean

from .activations import ACTIVATIONS, make_activation
from .cnn import CNN, CNNConfig
from .encoder import EncoderClassifier, EncoderClassifierConfig
from .gpt import GPT, GPTConfig
from .linear import Linear, LinearConfig
from .mlp import MLP, MLPConfig
from .recommender import (
    MatrixFactorization,
    MatrixFactorizationConfig,
    TwoTower,
    TwoTowerConfig,
)
from .rnn import RNNLM, RNNClassifier, RNNClassifierConfig, RNNLMConfig

MODELS: Registry[type[nn.Module]] = Registry("model")
MODELS.add("mlp", MLP)
MODELS.add("cnn", CNN)
MODELS.add("linear", Linear)

MODELS.add("gpt", GPT)
MODELS.add("rnn_lm", RNNLM)
MODELS.add("rnn_classifier", RNNClassifier)
MODELS.add("encoder", EncoderClassifier)
MODELS.add("mf", MatrixFactorization)
MODELS.add("two_tower", TwoTower)


class _LazyModel:
    """A model class imported on first attribute use (``"package.module:Class"``), for models
    whose code needs heavy optional packages (transformers) and lives in a feature package."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __getattr__(self, attr: str) -> Any:
        module, name = self.target.split(":")
        return getattr(getattr(importlib.import_module(module), name), attr)


MODELS.add("smollm2", _LazyModel("bigtrain.transfer.smollm2:SmolLM2"))  # type: ignore[arg-type]
MODELS.add(  # type: ignore[arg-type]
    "efficientnet_lite0", _LazyModel("bigtrain.transfer.pretrained_image:EfficientNetLite0")
)
MODELS.add("minilm", _LazyModel("bigtrain.transfer.pretrained_text:MiniLMClassifier"))  # type: ignore[arg-type]

_ADAPTERS: dict[type, pydantic.TypeAdapter] = {}


def _adapter(config_cls: type) -> pydantic.TypeAdapter:
    # Building a TypeAdapter compiles a validator: do it once per Config class.
    if config_cls not in _ADAPTERS:
        _ADAPTERS[config_cls] = pydantic.TypeAdapter(config_cls)
    return _ADAPTERS[config_cls]


def _type_name(tp: Any) -> str:
    # Model files use ``from __future__ import annotations``, so field types are the source text.
    if isinstance(tp, str):
        return tp
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def model_config_fields(name: str) -> list[str]:
    """The recipe keys model ``name`` accepts, in declaration order."""
    return [f.name for f in dataclasses.fields(MODELS.get(name).Config)]


def validate_model_config(name: str, params: Mapping[str, Any] | None, key: str = "model") -> Any:
    """Turn recipe keys into model ``name``'s Config dataclass, or raise a one-line ConfigError.

    Args:
        name: registered model name.
        params: recipe keys (a ``name`` key equal to ``name`` is ignored).
        key: prefix used in error messages (the recipe section).
    """
    config_cls = MODELS.get(name).Config
    if isinstance(params, config_cls):  # validated already (the recipe schema did it)
        return params
    if params is not None and not isinstance(params, Mapping):
        raise ConfigError(f"{key}: expected a mapping of keys to values, got {params!r}")
    params = dict(params or {})
    if params.get("name", name) == name:
        params.pop("name", None)
    fields = {f.name: f for f in dataclasses.fields(config_cls)}
    for k in params:
        if k not in fields:
            raise ConfigError(
                f"unknown key '{key}.{k}'{did_you_mean(k, fields)}; "
                f"model '{name}' accepts: {', '.join(fields)}"
            )
    try:
        return _adapter(config_cls).validate_python(params)
    except pydantic.ValidationError as exc:
        messages: dict[str, str] = {}  # one message per field, even if several items are wrong
        for err in exc.errors():
            if err["loc"]:  # a field has the wrong type
                field = str(err["loc"][0])
                expected = _type_name(fields[field].type)
                messages[field] = f"{key}.{field}: expected {expected}, got {params[field]!r}"
            else:  # __post_init__ raised ValueError("<field>: <what is wrong>")
                msg = f"{key}.{err.get('ctx', {}).get('error', err['msg'])}"
                messages[msg] = msg
        raise ConfigError("; ".join(messages.values())) from None


def build_model(
    name: str,
    params: Mapping[str, Any] | None,
    input_shape: tuple[int, ...],
    num_outputs: int,
    *,
    key: str = "model",
) -> nn.Module:
    """Validate ``params`` against model ``name``'s Config and build the model.

    Args:
        name: registered model name ("mlp", "cnn", "linear", ...).
        params: recipe keys of the model section, without ``name``, or the model's Config.
        input_shape: shape of one example (no batch dim), from the data.
        num_outputs: number of classes or regression targets, from the data.
        key: recipe section name used in error messages.

    Raises:
        ConfigError: unknown model or key, wrong type or value, or data the model cannot take.
    """
    cfg = validate_model_config(name, params, key)
    try:
        return MODELS.get(name).from_config(cfg, tuple(input_shape), int(num_outputs))
    except ValueError as exc:
        raise ConfigError(f"{key} '{name}': {exc}") from None


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (shared ones counted once); only ``requires_grad`` ones if asked."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


__all__ = [
    "ACTIVATIONS",
    "CNN",
    "CNNConfig",
    "EncoderClassifier",
    "EncoderClassifierConfig",
    "GPT",
    "GPTConfig",
    "RNNLM",
    "RNNLMConfig",
    "RNNClassifier",
    "RNNClassifierConfig",
    "MLP",
    "MLPConfig",
    "MODELS",
    "MatrixFactorization",
    "MatrixFactorizationConfig",
    "TwoTower",
    "TwoTowerConfig",
    "Linear",
    "LinearConfig",
    "build_model",
    "count_parameters",
    "make_activation",
    "model_config_fields",
    "validate_model_config",
]
