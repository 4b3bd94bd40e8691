"""Simulated sinograms for learned reconstruction: phantoms -> parallel-beam data.

The DataModule that serves them: :mod:`src.data.sinogram_datamodule`.

Ground truths are 2D slices ``(H, W)`` in *relative attenuation* (NMC = 1 for electrodes,
ellipse values in [0, 1]), zero outside the disk inscribed in the slice (the field of view of a
detector as wide as the slice):

* synthetic electrode slices: :func:`~src.simulation.microstructure.generate_microstructure` label volumes,
  attenuation per phase from :class:`~src.simulation.imaging.ImagingConfig` scaled so that the largest
  is 1, slices taken along z, y and x;
* random ellipse phantoms (Adler & Oektem's training data): sums of random ellipses, clipped to
  [0, 1].

Measurements: ``p = A x`` (pixel units) with the project's
:class:`~src.recon.operators.ParallelBeamProjector` at ``n_angles`` even angles over [0, pi).
With ``photons`` (incident photons per detector bin) the transmission is
``exp(-mu p)``, counts are Poisson and the sinogram is ``-log(counts / photons) / mu`` (back in
the units of ``p``); ``mu`` (attenuation per pixel of a unit value) defaults to ``2 / image_size``
so that a unit disk across the field transmits about ``exp(-2)``. ``photons=None`` is noiseless.
Everything is generated batched in torch from the seed and kept in memory.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from src.recon.operators import ParallelBeamProjector
from src.simulation.imaging import ImagingConfig
from src.simulation.microstructure import MicrostructureConfig, generate_microstructure

__all__ = [
    "attenuation_unit",
    "disk_mask",
    "electrode_slices",
    "random_ellipses",
    "simulate_sinograms",
]

_COUNT_FLOOR = 0.5  # counts below this (zero photons) are clipped before -log


def attenuation_unit(image_size: int, mu: float | None = None) -> float:
    """Attenuation per pixel of a unit image value: ``mu`` or the default ``2 / image_size``."""
    return float(mu) if mu is not None else 2.0 / float(image_size)


def disk_mask(size: int, margin: float = 1.0) -> Tensor:
    """``(size, size)`` bool: pixel centres within ``size / 2 - margin`` of the centre."""
    c = torch.arange(size, dtype=torch.float32) + 0.5 - size / 2
    return (c[:, None] ** 2 + c[None, :] ** 2) <= (size / 2 - margin) ** 2


def random_ellipses(
    n: int, size: int, generator: torch.Generator, max_ellipses: int = 12, min_ellipses: int = 3,
    batch: int = 64,
) -> Tensor:
    """``n`` random ellipse phantoms ``(n, size, size)`` float32 in [0, 1], inside the disk.

    Each has ``min_ellipses..max_ellipses`` ellipses (semi-axes 5-45% of the half-width, any
    orientation); a quarter of them subtract (holes), the rest add a value in [0.1, 1].
    """
    if n <= 0:
        return torch.zeros(0, size, size)
    c = (torch.arange(size, dtype=torch.float32) + 0.5) / (size / 2) - 1.0  # [-1, 1]
    yy, xx = c[:, None], c[None, :]
    out = []
    k = max_ellipses
    for start in range(0, n, batch):
        m = min(batch, n - start)
        u = torch.rand(m, k, 7, generator=generator)
        count = torch.randint(min_ellipses, max_ellipses + 1, (m, 1), generator=generator)
        active = torch.arange(k)[None] < count  # (m, k)
        a = 0.05 + 0.4 * u[..., 0]
        b = 0.05 + 0.4 * u[..., 1]
        rad = (0.92 - torch.maximum(a, b)) * u[..., 2].sqrt()
        phi = 2 * math.pi * u[..., 3]
        cx, cy = rad * torch.cos(phi), rad * torch.sin(phi)
        rot = math.pi * u[..., 4]
        value = torch.where(u[..., 5] < 0.25, -(0.1 + 0.4 * u[..., 6]), 0.1 + 0.9 * u[..., 6])
        value = value * active
        dx = xx[None, None] - cx[..., None, None]  # (m, k, size, size)
        dy = yy[None, None] - cy[..., None, None]
        cr, sr = torch.cos(rot)[..., None, None], torch.sin(rot)[..., None, None]
        inside = ((dx * cr + dy * sr) / a[..., None, None]) ** 2 + (
            (-dx * sr + dy * cr) / b[..., None, None]) ** 2 <= 1.0
        out.append((inside * value[..., None, None]).sum(1).clamp(0.0, 1.0))
    return torch.cat(out) * disk_mask(size)


def electrode_slices(
    n: int, size: int, seed: int, microstructure: Mapping[str, Any] | None = None,
    attenuation: Sequence[float] | None = None,
) -> Tensor:
    """``n`` slices ``(n, size, size)`` float32 of synthetic electrodes, relative attenuation.

    Volumes ``(size, size, size)`` from seeds ``seed, seed + 1, ...`` are cut along z, y and x;
    the slices are shuffled (seeded) and masked to the inscribed disk. ``attenuation`` per phase
    (NMC, CBD, pore) defaults to :class:`~src.simulation.imaging.ImagingConfig`'s, scaled to max 1.
    """
    if n <= 0:
        return torch.zeros(0, size, size)
    lut = np.asarray(attenuation if attenuation is not None else ImagingConfig().attenuation,
                     np.float32)
    lut = lut / lut.max()
    per_volume = 3 * size
    slices = []
    for k in range(math.ceil(n / per_volume)):
        cfg = MicrostructureConfig(**{**dict(microstructure or {}), "shape": (size, size, size)})
        vol = lut[generate_microstructure(cfg, seed + k)]
        slices += [vol, vol.transpose(1, 0, 2), vol.transpose(2, 0, 1)]
    stack = torch.from_numpy(np.ascontiguousarray(np.concatenate(slices)))
    order = torch.randperm(len(stack), generator=torch.Generator().manual_seed(seed))[:n]
    return stack[order] * disk_mask(size)


@torch.no_grad()
def simulate_sinograms(
    images: Tensor, projector: ParallelBeamProjector, photons: float | None = None,
    mu: float | None = None, generator: torch.Generator | None = None, batch: int = 64,
) -> Tensor:
    """Measured sinograms ``(N, A, n_det)`` of ``images`` ``(N, H, W)`` (see the module doc).

    ``photons=None``: noiseless ``A x``; else Poisson counts at ``photons`` per bin with
    attenuation ``mu`` per pixel of a unit value, returned as ``-log(counts/photons) / mu``.
    """
    if images.dim() != 3 or tuple(images.shape[1:]) != projector.image_shape:
        raise ValueError(f"images must be (N, {projector.image_shape[0]}, "
                         f"{projector.image_shape[1]}), got {tuple(images.shape)}")
    if photons is not None and photons <= 0:
        raise ValueError(f"photons must be > 0 or None (noiseless), got {photons}")
    unit = attenuation_unit(projector.image_shape[1], mu)
    out = []
    for start in range(0, len(images), batch):
        p = projector(images[start:start + batch].float())
        if photons is not None:
            counts = torch.poisson(photons * torch.exp(-unit * p), generator=generator)
            p = -torch.log(counts.clamp_min(_COUNT_FLOOR) / photons) / unit
        out.append(p)
    return torch.cat(out) if out else images.new_zeros(0, *projector.sino_shape)

