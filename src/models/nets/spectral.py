"""Small 2D networks for XANES spectral stacks (pure torch): energies are channels.

* :class:`SpectralDenoiser`: ``(B, E, H, W) → (B, E, H, W)``, the input plus a U-Net residual
  (it learns the noise to remove, across energies and neighbouring voxels);
* :class:`SpectralSpatialDenoiser`: ``(B, E, H, W) → (B, E, H, W)`` through a learned
  low-dimensional spectral basis (1×1 convolutions E → K → E: the spectra of a sample span few
  components — background, the two end-members) with a few 3×3 convolutions on the K component
  maps in between (neighbouring voxels); light, so it trains in CPU minutes;
* :class:`EdgeEnergyNet`: ``(B, E_in, H, W) → (B, 1, H, W)`` edge energy in eV, a U-Net whose
  output is ``centre_eV + scale_eV * u`` so that the net works with numbers near 0.
Both are :class:`~src.models.nets.unet.UNet` inside (``base_filters``, ``depth``, ``norm``).
"""

from __future__ import annotations

import torch
from torch import nn

from src.models.nets.unet import UNet

__all__ = ["EdgeEnergyNet", "SpectralDenoiser", "SpectralSpatialDenoiser"]


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
        """Denoised stack ``(B, E, H, W)``: the input plus the U-Net's residual."""
        return x + self.unet(x)


class SpectralSpatialDenoiser(nn.Module):
    """Denoiser in a learned spectral basis: ``decode(z + spatial(z))`` with ``z = encode(x)``.

    ``encode``/``decode``: 1×1 convolutions ``n_energies`` → ``components`` → ``n_energies``
    (a learned low-rank projection of every voxel's spectrum); ``spatial``: ``blocks`` 3×3
    convolutions of ``width`` channels (GELU) on the component maps, its last layer zero-initialised
    so that training starts from the pure spectral projection. :meth:`init_spectral_basis` sets
    the projection to the principal components of training spectra (what the module does at
    the start of training), from which gradient descent only refines.
    """

    def __init__(self, n_energies: int = 60, components: int = 12, width: int = 32, blocks: int = 3) -> None:
        super().__init__()
        self.n_energies = int(n_energies)
        self.size_multiple = 1
        self.encode = nn.Conv2d(self.n_energies, components, 1)
        layers: list[nn.Module] = [nn.Conv2d(components, width, 3, padding=1, padding_mode="reflect"), nn.GELU()]
        for _ in range(max(0, blocks - 2)):
            layers += [nn.Conv2d(width, width, 3, padding=1, padding_mode="reflect"), nn.GELU()]
        layers.append(nn.Conv2d(width, components, 3, padding=1, padding_mode="reflect"))
        self.spatial = nn.Sequential(*layers)
        nn.init.zeros_(self.spatial[-1].weight)
        nn.init.zeros_(self.spatial[-1].bias)
        self.decode = nn.Conv2d(components, self.n_energies, 1)

    @torch.no_grad()
    def init_spectral_basis(self, spectra: torch.Tensor) -> None:
        """Encoder/decoder := the leading principal components of ``spectra`` ``(N, E)``.

        The output starts as the projection ``mean + V Vᵀ (x - mean)`` of every voxel's spectrum.
        """
        if spectra.ndim != 2 or spectra.shape[1] != self.n_energies:
            raise ValueError(f"spectra must be (N, {self.n_energies}), got {tuple(spectra.shape)}")
        spectra = spectra.double()
        mean = spectra.mean(0)
        _, _, vt = torch.linalg.svd(spectra - mean, full_matrices=False)
        k = self.encode.out_channels
        v = vt[:k].T  # (E, k)
        if v.shape[1] < k:
            v = torch.cat([v, torch.zeros(v.shape[0], k - v.shape[1], dtype=v.dtype)], 1)
        self.encode.weight.copy_(v.T.reshape(k, -1, 1, 1))
        self.encode.bias.copy_(-(v.T @ mean))
        self.decode.weight.copy_(v.reshape(-1, k, 1, 1))
        self.decode.bias.copy_(mean)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoised stack ``(B, E, H, W)``: ``decode(z + spatial(z))`` with ``z = encode(x)``."""
        z = self.encode(x)
        return self.decode(z + self.spatial(z))


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
        """Edge energy relative to ``centre_eV`` in units of ``scale_eV``.

        Add back with :meth:`to_eV`; kept relative so float32 keeps sub-meV precision.
        """
        return self.unet(x)

    def to_eV(self, out: torch.Tensor) -> torch.Tensor:
        """Net output ``(B, 1, H, W)`` -> absolute edge energy (eV, float64)."""
        return self.centre_eV + self.scale_eV * out.double()
