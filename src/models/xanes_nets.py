"""Small 2D networks for XANES spectral stacks (pure torch): energies are channels.

* :class:`SpectralDenoiser`: ``(B, E, H, W) → (B, E, H, W)``, the input plus a U-Net residual
  (it learns the noise to remove, across energies and neighbouring voxels);
* :class:`EdgeEnergyNet`: ``(B, E_in, H, W) → (B, 1, H, W)`` edge energy in eV, a U-Net whose
  output is ``centre_eV + scale_eV * u`` so that the net works with numbers near 0.
Both are :class:`~src.models.unet.UNet` inside (``base_filters``, ``depth``, ``norm``).
"""

from __future__ import annotations

import torch
from torch import nn

from src.models.unet import UNet

__all__ = ["EdgeEnergyNet", "SpectralDenoiser"]


class SpectralDenoiser(nn.Module):
    """Residual U-Net denoiser of a spectral stack with ``n_energies`` channels."""

    def __init__(self, n_energies: int = 60, base_filters: int = 32, depth: int = 2, norm: str = "batch") -> None:
        super().__init__()
        self.n_energies = int(n_energies)
        self.unet = UNet(2, self.n_energies, self.n_energies, base_filters, depth, norm)
        self.size_multiple = self.unet.size_multiple
        nn.init.zeros_(self.unet.head.weight)  # start as the identity
        nn.init.zeros_(self.unet.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.unet(x)


class EdgeEnergyNet(nn.Module):
    """U-Net regression of the edge-energy map (eV) from ``n_energies`` input energies."""

    def __init__(self, n_energies: int = 15, base_filters: int = 32, depth: int = 2, norm: str = "batch",
                 centre_eV: float = 8344.5, scale_eV: float = 1.0) -> None:
        super().__init__()
        self.n_energies = int(n_energies)
        self.unet = UNet(2, self.n_energies, 1, base_filters, depth, norm)
        self.size_multiple = self.unet.size_multiple
        self.centre_eV, self.scale_eV = float(centre_eV), float(scale_eV)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Edge energy relative to ``centre_eV`` in units of ``scale_eV`` (add back with
        :meth:`to_eV`; kept relative so float32 keeps sub-meV precision)."""
        return self.unet(x)

    def to_eV(self, out: torch.Tensor) -> torch.Tensor:
        return self.centre_eV + self.scale_eV * out.double()
