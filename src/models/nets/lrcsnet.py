"""LRCS-Net: the asymmetric SegNet-like encoder-decoder of SegmentPy (Su et al., 2022).

Variants (SegmentPy names in brackets):

* ``"shallow"`` (LRCS11): the default; no skip connections, no dropout.
* ``"deep"`` (LRCS13): as shallow, plus dropout after each encoder conv and decoder stage.
* ``"shortcut"`` (LRCS12): as shallow, plus U-Net-style concatenation of the encoder features
  at 1/4, 1/2 and 1/1 resolution into the first conv of the matching decoder stage.

Pure ``torch.nn``; no Lightning.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Variant = Literal["shallow", "deep", "shortcut"]
_VARIANTS = ("shallow", "deep", "shortcut")


def _activation() -> nn.Module:
    return nn.LeakyReLU(0.1, inplace=True)


class _EncoderConv(nn.Sequential):
    """K x K conv (with bias, no normalisation) -> LeakyReLU [-> dropout]."""

    def __init__(self, cin: int, cout: int, k: int, dropout: float) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding="same"), _activation()]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


def _decoder_conv(cin: int, cout: int, k: int) -> list[nn.Module]:
    """K x K conv -> BatchNorm -> LeakyReLU."""
    return [
        nn.Conv2d(cin, cout, k, padding="same", bias=False),
        nn.BatchNorm2d(cout),
        _activation(),
    ]


class _DecoderStage(nn.Sequential):
    """Two conv-BN-activation layers (cin -> cmid -> cout) [-> dropout]."""

    def __init__(self, cin: int, cmid: int, cout: int, k: int, dropout: float) -> None:
        layers = [*_decoder_conv(cin, cmid, k), *_decoder_conv(cmid, cout, k)]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        super().__init__(*layers)


class LRCSNet(nn.Module):
    """LRCS-Net for 2D slices: (B, in_channels, H, W) -> logits (B, num_classes, H, W).

    H and W must be multiples of 8 (three 2x2 max-pools, undone by max-unpooling with the
    stored indices). ``base_filters`` is C: the encoder uses 2C, 2C, 4C channels and a 4C
    sigmoid bottleneck; encoder convs have no batch norm. ``dropout`` is used only by the
    ``"deep"`` variant.
    """

    spatial_dims = 2
    size_multiple = 8

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 3,
        base_filters: int = 32,
        kernel_size: int = 3,
        variant: Variant = "shallow",
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        if variant not in _VARIANTS:
            raise ValueError(f"variant must be one of {_VARIANTS}, got {variant!r}")
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}")
        c, k = base_filters, kernel_size
        p = dropout if variant == "deep" else 0.0
        self.in_channels, self.num_classes, self.variant = in_channels, num_classes, variant
        self.shortcut = variant == "shortcut"
        # encoder (no BN); convs at 1/1, 1/2, 1/4, bottleneck at 1/8
        self.enc1 = _EncoderConv(in_channels, 2 * c, k, p)
        self.enc2 = _EncoderConv(2 * c, 2 * c, k, p)
        self.enc3 = _EncoderConv(2 * c, 4 * c, k, p)
        self.bottleneck = nn.Sequential(nn.Conv2d(4 * c, 4 * c, k, padding="same"), nn.Sigmoid())
        self.pool = nn.MaxPool2d(2, 2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2, 2)
        # decoder; with shortcuts the first conv of a stage also sees the encoder features
        s = 1 if self.shortcut else 0
        self.dec8 = _DecoderStage(4 * c, 4 * c, 4 * c, k, p)
        self.dec4 = _DecoderStage(4 * c + s * 4 * c, 4 * c, 2 * c, k, p)
        self.dec2 = _DecoderStage(2 * c + s * 2 * c, 2 * c, 2 * c, k, p)
        self.dec1 = _DecoderStage(2 * c + s * 2 * c, c, c, k, p)
        self.head = nn.Conv2d(c, num_classes, k, padding="same")

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(
                f"LRCSNet expects input (B, {self.in_channels}, H, W), got {tuple(x.shape)}"
            )
        h, w = x.shape[-2:]
        if h % self.size_multiple or w % self.size_multiple:
            raise ValueError(
                f"LRCSNet needs H and W to be multiples of {self.size_multiple}, got input "
                f"shape {tuple(x.shape)}; pad the input (the sliding-window predictor does)"
            )

    def _merge(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, skip], dim=1) if self.shortcut else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> logits (B, num_classes, H, W)."""
        self._check_input(x)
        e1 = self.enc1(x)  # (B, 2C, H, W)
        y, i1 = self.pool(e1)
        e2 = self.enc2(y)  # (B, 2C, H/2, W/2)
        y, i2 = self.pool(e2)
        e3 = self.enc3(y)  # (B, 4C, H/4, W/4)
        y, i3 = self.pool(e3)
        y = self.bottleneck(y)  # (B, 4C, H/8, W/8)
        y = self.unpool(self.dec8(y), i3, output_size=e3.shape[-2:])
        y = self.unpool(self.dec4(self._merge(y, e3)), i2, output_size=e2.shape[-2:])
        y = self.unpool(self.dec2(self._merge(y, e2)), i1, output_size=e1.shape[-2:])
        y = self.dec1(self._merge(y, e1))  # (B, C, H, W)
        return self.head(y)
