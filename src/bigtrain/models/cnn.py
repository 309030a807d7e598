"""Small convolutional network: conv blocks, then an MLP head."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .activations import check_activation, init_weights, make_activation
from .mlp import MLP, MLPConfig, check_dropout, check_hidden

POOLS = ("max", "avg", "none")


@dataclass
class CNNConfig:
    """Recipe keys of ``model: {name: cnn, ...}``.

    Attributes:
        channels: output channels of each conv block.
        kernel_size: odd square kernel; padding keeps the spatial size ("same").
        activation: one of ``ACTIVATIONS``.
        dropout: drop probability in the MLP head.
        batch_norm: BatchNorm2d after each conv (the conv then has no bias: BN's shift replaces it).
        pool: "max", "avg" or "none"; a 2x2 pool follows a block while the image is >= 2 pixels.
        hidden: hidden widths of the MLP head (``[]``: one Linear to the outputs).
        global_pool: average each channel over space before the head (fewer head parameters).
    """

    channels: list[int] = field(default_factory=lambda: [32, 64])
    kernel_size: int = 3
    activation: str = "relu"
    dropout: float = 0.0
    batch_norm: bool = True
    pool: str = "max"
    hidden: list[int] = field(default_factory=lambda: [128])
    global_pool: bool = False

    def __post_init__(self) -> None:
        if not self.channels:
            raise ValueError("channels: give at least one conv block, e.g. [32, 64]")
        check_hidden(self.channels, "channels")
        check_hidden(self.hidden, "hidden")
        if self.kernel_size < 1 or self.kernel_size % 2 == 0:
            raise ValueError(f"kernel_size: must be an odd number >= 1, got {self.kernel_size}")
        check_activation(self.activation)
        check_dropout(self.dropout)
        if self.pool not in POOLS:
            raise ValueError(f"pool: must be one of {', '.join(POOLS)}, got '{self.pool}'")


def image_shape(input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """``(C, H, W)`` from an example shape ``(C, H, W)`` or ``(H, W)`` (one channel)."""
    shape = tuple(input_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    if len(shape) == 3 and min(shape) >= 1:
        return shape  # type: ignore[return-value]
    raise ValueError(
        f"cnn needs image inputs shaped (C, H, W) or (H, W), got {tuple(input_shape)}; "
        "use an image data set or the mlp model"
    )


class CNN(nn.Module):
    """Conv blocks ``conv -> [BN] -> act -> [pool 2x2]``, flatten, then an MLP head.

    Args:
        input_shape: one example, ``(C, H, W)`` or ``(H, W)``; flat batches are reshaped to it.
        num_outputs: number of outputs.
        cfg: block and head options.
    """

    Config = CNNConfig

    def __init__(
        self, input_shape: tuple[int, ...], num_outputs: int, cfg: CNNConfig | None = None
    ) -> None:
        super().__init__()
        cfg = cfg or CNNConfig()
        self.cfg = cfg
        self.input_shape = image_shape(input_shape)
        c, h, w = self.input_shape
        blocks: list[nn.Module] = []
        for out_c in cfg.channels:
            conv = nn.Conv2d(
                c, out_c, cfg.kernel_size, padding=cfg.kernel_size // 2, bias=not cfg.batch_norm
            )
            init_weights(conv, cfg.activation)
            blocks.append(conv)  # odd kernel + padding k//2: spatial size unchanged
            if cfg.batch_norm:
                blocks.append(nn.BatchNorm2d(out_c))
            blocks.append(make_activation(cfg.activation))
            # Pool only while both sides have >= 2 pixels, so 8x8 digits and 28x28 MNIST both fit.
            if cfg.pool != "none" and h >= 2 and w >= 2:
                blocks.append(nn.MaxPool2d(2) if cfg.pool == "max" else nn.AvgPool2d(2))
                h, w = h // 2, w // 2  # floor, as the pool layers compute it
            c = out_c
        if cfg.global_pool:
            blocks.append(nn.AdaptiveAvgPool2d(1))
            h = w = 1
        self.features = nn.Sequential(*blocks)
        self.flat_features = c * h * w  # computed from shapes: no dummy forward needed
        head_cfg = MLPConfig(
            hidden=list(cfg.hidden), activation=cfg.activation, dropout=cfg.dropout
        )
        self.head = MLP(self.flat_features, num_outputs, head_cfg)

    @classmethod
    def from_config(cls, cfg: CNNConfig, input_shape: tuple[int, ...], num_outputs: int) -> CNN:
        """Build for image inputs of ``input_shape``, e.g. ``(1, 28, 28)``."""
        return cls(input_shape, num_outputs, cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (B, C*H*W), (B, H, W) or (B, C, H, W) -> (B, C, H, W); a view when x is contiguous
        x = x.reshape(x.shape[0], *self.input_shape)
        x = self.features(x)  # (B, C', H', W')
        return self.head(x)  # MLP flattens: (B, C'*H'*W') -> (B, num_outputs)
