"""Classic U-Net (Ronneberger et al., 2015) for 2D slices or 3D volumes. Pure ``torch.nn``.

``depth`` resolution levels with C, 2C, ..., 2^(depth-1) C channels, a 2^depth C bottleneck,
max-pool down, transposed-conv up, concatenation skips and a 1x1 conv head giving logits.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

Norm = Literal["batch", "instance"]

_LAYERS: dict[int, dict[str, type[nn.Module]]] = {
    2: {
        "conv": nn.Conv2d,
        "up": nn.ConvTranspose2d,
        "pool": nn.MaxPool2d,
        "batch": nn.BatchNorm2d,
        "instance": nn.InstanceNorm2d,
        "dropout": nn.Dropout2d,
    },
    3: {
        "conv": nn.Conv3d,
        "up": nn.ConvTranspose3d,
        "pool": nn.MaxPool3d,
        "batch": nn.BatchNorm3d,
        "instance": nn.InstanceNorm3d,
        "dropout": nn.Dropout3d,
    },
}


class _DoubleConv(nn.Sequential):
    """(3^d conv -> norm -> ReLU) x 2 [-> channel dropout]."""

    def __init__(
        self, layers: dict[str, type[nn.Module]], cin: int, cout: int, norm: Norm, dropout: float
    ) -> None:
        conv, norm_cls = layers["conv"], layers[norm]
        norm_kwargs = {"affine": True} if norm == "instance" else {}
        mods: list[nn.Module] = []
        for c_in in (cin, cout):
            mods += [
                conv(c_in, cout, 3, padding=1, bias=False),
                norm_cls(cout, **norm_kwargs),
                nn.ReLU(inplace=True),
            ]
        if dropout > 0:
            mods.append(layers["dropout"](dropout))
        super().__init__(*mods)


class UNet(nn.Module):
    """U-Net: (B, in_channels, *spatial) -> logits (B, num_classes, *spatial).

    ``spatial`` is (H, W) for ``spatial_dims=2`` or (D, H, W) for 3; every spatial size must be a
    multiple of ``size_multiple = 2**depth``. ``dropout`` (channel dropout) follows every
    double-conv block when > 0.
    """

    def __init__(
        self,
        spatial_dims: int = 2,
        in_channels: int = 1,
        num_classes: int = 3,
        base_filters: int = 16,
        depth: int = 4,
        norm: Norm = "batch",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if spatial_dims not in _LAYERS:
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims!r}")
        if norm not in ("batch", "instance"):
            raise ValueError(f"norm must be 'batch' or 'instance', got {norm!r}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        layers = _LAYERS[spatial_dims]
        self.spatial_dims, self.in_channels, self.num_classes = (
            spatial_dims,
            in_channels,
            num_classes,
        )
        self.size_multiple = 2**depth
        widths = [base_filters * 2**i for i in range(depth + 1)]  # C .. 2^depth C (bottleneck)
        self.down = nn.ModuleList()
        cin = in_channels
        for w in widths[:-1]:
            self.down.append(_DoubleConv(layers, cin, w, norm, dropout))
            cin = w
        self.pool = layers["pool"](2)
        self.bottleneck = _DoubleConv(layers, widths[-2], widths[-1], norm, dropout)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for w_low, w in zip(reversed(widths[1:]), reversed(widths[:-1]), strict=True):
            self.up.append(layers["up"](w_low, w, kernel_size=2, stride=2))
            self.dec.append(_DoubleConv(layers, 2 * w, w, norm, dropout))
        self.head = layers["conv"](widths[0], num_classes, 1)

    def _check_input(self, x: torch.Tensor) -> None:
        if x.ndim != self.spatial_dims + 2 or x.shape[1] != self.in_channels:
            dims = "H, W" if self.spatial_dims == 2 else "D, H, W"
            raise ValueError(
                f"UNet expects input (B, {self.in_channels}, {dims}), got {tuple(x.shape)}"
            )
        if any(s % self.size_multiple for s in x.shape[2:]):
            raise ValueError(
                f"UNet(depth={len(self.down)}) needs spatial sizes that are multiples of "
                f"{self.size_multiple}, got input shape {tuple(x.shape)}; pad the input"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, *spatial) -> logits (B, num_classes, *spatial)."""
        self._check_input(x)
        skips: list[torch.Tensor] = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, block, skip in zip(self.up, self.dec, reversed(skips), strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)
