"""Multi-layer perceptron: flatten -> (Linear -> [norm] -> act -> [dropout]) x N -> Linear."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .activations import check_activation, init_weights, make_activation


@dataclass
class MLPConfig:
    """Recipe keys of ``model: {name: mlp, ...}``.

    Attributes:
        hidden: width of each hidden layer; ``[]`` gives a linear (logistic) model.
        activation: one of ``ACTIVATIONS`` (relu, gelu, tanh, ...).
        dropout: drop probability after each hidden activation (0 disables it).
        batch_norm: BatchNorm1d after each hidden Linear.
        layer_norm: LayerNorm after each hidden Linear (exclusive with ``batch_norm``).
        bias: give the Linear layers a bias.
    """

    hidden: list[int] = field(default_factory=lambda: [128])
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = False
    layer_norm: bool = False
    bias: bool = True

    def __post_init__(self) -> None:
        check_hidden(self.hidden, "hidden")
        check_activation(self.activation)
        check_dropout(self.dropout)
        if self.batch_norm and self.layer_norm:
            raise ValueError("batch_norm: choose batch_norm or layer_norm, not both")


def check_hidden(sizes: list[int], key: str) -> None:
    """Raise ValueError unless every layer size is a positive integer."""
    bad = [s for s in sizes if s < 1]
    if bad:
        raise ValueError(f"{key}: layer sizes must be >= 1, got {sizes}")


def check_dropout(p: float) -> None:
    """Raise ValueError unless ``0 <= p < 1`` (p = 1 would zero every activation)."""
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout: must be in [0, 1), got {p}")


class MLP(nn.Module):
    """A plain feed-forward network on flattened inputs.

    Args:
        in_features: size of one flattened input example.
        num_outputs: number of outputs (classes, or regression targets).
        cfg: layer sizes and options.
    """

    Config = MLPConfig

    def __init__(self, in_features: int, num_outputs: int, cfg: MLPConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or MLPConfig()
        if in_features < 1 or num_outputs < 1:
            raise ValueError(
                f"mlp needs in_features >= 1 and num_outputs >= 1, got {in_features}, {num_outputs}"
            )
        self.cfg = cfg
        layers: list[nn.Module] = []
        width = in_features
        for size in cfg.hidden:
            linear = nn.Linear(width, size, bias=cfg.bias)
            init_weights(linear, cfg.activation)
            layers.append(linear)
            if cfg.batch_norm:
                layers.append(nn.BatchNorm1d(size))
            elif cfg.layer_norm:
                layers.append(nn.LayerNorm(size))
            layers.append(make_activation(cfg.activation))
            if cfg.dropout > 0:
                layers.append(nn.Dropout(cfg.dropout))
            width = size
        head = nn.Linear(width, num_outputs, bias=cfg.bias)
        init_weights(head, None)  # no nonlinearity follows the output layer
        layers.append(head)
        self.net = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, cfg: MLPConfig, input_shape: tuple[int, ...], num_outputs: int) -> MLP:
        """Build for inputs of ``input_shape`` (one example, no batch dim), e.g. ``(64,)``."""
        return cls(math.prod(input_shape), num_outputs, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.flatten(1))  # (B, ...) -> (B, F) -> (B, num_outputs)
