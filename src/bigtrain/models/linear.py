"""The plain linear model y = x W^T + b: linear regression, or logistic regression with a
cross-entropy / BCE task."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from .activations import init_weights


@dataclass
class LinearConfig:
    """Recipe keys of ``model: {name: linear, ...}``.

    Attributes:
        bias: learn an intercept.
    """

    bias: bool = True


class Linear(nn.Module):
    """One Linear layer on flattened inputs.

    Args:
        in_features: size of one flattened input example.
        num_outputs: number of outputs.
        cfg: options.
    """

    Config = LinearConfig

    def __init__(self, in_features: int, num_outputs: int, cfg: LinearConfig | None = None) -> None:
        super().__init__()
        cfg = cfg or LinearConfig()
        if in_features < 1 or num_outputs < 1:
            raise ValueError(
                f"linear needs in_features >= 1 and num_outputs >= 1, "
                f"got {in_features}, {num_outputs}"
            )
        self.cfg = cfg
        self.linear = nn.Linear(in_features, num_outputs, bias=cfg.bias)
        init_weights(self.linear, None)

    @classmethod
    def from_config(
        cls, cfg: LinearConfig, input_shape: tuple[int, ...], num_outputs: int
    ) -> Linear:
        """Build for inputs of ``input_shape`` (one example, no batch dim)."""
        return cls(math.prod(input_shape), num_outputs, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))  # (B, ...) -> (B, F) -> (B, num_outputs)

    def coefficients(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Detached copies of ``(weight, bias)``: weight is (num_outputs, F), bias (num_outputs,).

        For a 1-D regression ``slope, intercept = w.item(), b.item()``.
        """
        weight = self.linear.weight.detach().clone()
        bias = self.linear.bias.detach().clone() if self.linear.bias is not None else None
        return weight, bias
