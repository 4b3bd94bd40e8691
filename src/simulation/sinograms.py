"""Simulated sinograms for learned reconstruction: phantoms -> parallel-beam data -> DataModule.

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
import pytorch_lightning as pl
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from src.config import to_plain
from src.recon.fbp import fbp
from src.recon.operators import ParallelBeamProjector
from src.simulation.imaging import ImagingConfig
from src.simulation.microstructure import MicrostructureConfig, generate_microstructure

__all__ = [
    "SinogramDataModule",
    "SinogramDataset",
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


class SinogramDataset(Dataset):
    """Pairs ``{"image": (1, H, W), "sinogram": (1, A, n_det)}`` from in-memory tensors."""

    def __init__(self, images: Tensor, sinograms: Tensor) -> None:
        if len(images) != len(sinograms):
            raise ValueError(f"{len(images)} images but {len(sinograms)} sinograms")
        self.images, self.sinograms = images.float(), sinograms.float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"image": self.images[i][None], "sinogram": self.sinograms[i][None]}


class SinogramDataModule(pl.LightningDataModule):
    """Training and held-out pairs (true slice, simulated sinogram) for learned reconstruction.

    Args:
        image_size: slice side ``H = W`` (pixels).
        n_angles: projections, evenly spaced over [0, pi) (sparse view: few).
        n_det: detector bins (default ``image_size``); ``center``: rotation-axis column.
        photons: incident photons per bin (Poisson, low dose: few); None: noiseless.
        mu: attenuation per pixel of a unit value (default ``2 / image_size``).
        train_samples, val_samples: slices in each set (the held-out set has its own seeds).
        ellipse_fraction: share of ellipse phantoms in training (the rest electrode slices).
        val_ellipse_fraction: the same for the held-out set (None: as training).
        max_ellipses: ellipses per phantom at most.
        microstructure: :class:`~src.simulation.microstructure.MicrostructureConfig` fields (not shape).
        attenuation: per-phase attenuation (NMC, CBD, pore), relative; default ImagingConfig's.
        batch_size, num_workers: loaders.
        seed: every random draw (phantoms, volumes, noise) derives from it.
    """

    def __init__(
        self,
        image_size: int = 64,
        n_angles: int = 60,
        n_det: int | None = None,
        center: float | None = None,
        photons: float | None = 1e4,
        mu: float | None = None,
        train_samples: int = 512,
        val_samples: int = 64,
        ellipse_fraction: float = 0.5,
        val_ellipse_fraction: float | None = None,
        max_ellipses: int = 12,
        microstructure: Mapping[str, Any] | None = None,
        attenuation: Sequence[float] | None = None,
        batch_size: int = 8,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        microstructure, attenuation = to_plain(microstructure), to_plain(attenuation)
        self.save_hyperparameters(logger=False)
        for name, frac in (("ellipse_fraction", ellipse_fraction),
                           ("val_ellipse_fraction", val_ellipse_fraction)):
            if frac is not None and not 0.0 <= frac <= 1.0:
                raise ValueError(f"data.{name} must be in [0, 1], got {frac}")
        if image_size < 8 or n_angles < 1:
            raise ValueError(f"need image_size >= 8 and n_angles >= 1, got {image_size}, {n_angles}")
        if photons is not None and photons <= 0:
            raise ValueError(f"data.photons must be > 0 or null (noiseless), got {photons}")
        self.image_size, self.n_angles = int(image_size), int(n_angles)
        self.n_det = int(n_det) if n_det is not None else self.image_size
        self.center = center
        self.photons = None if photons is None else float(photons)
        self.mu = attenuation_unit(self.image_size, mu)
        self.train_samples, self.val_samples = int(train_samples), int(val_samples)
        self.ellipse_fraction = float(ellipse_fraction)
        self.val_ellipse_fraction = (self.ellipse_fraction if val_ellipse_fraction is None
                                     else float(val_ellipse_fraction))
        self.max_ellipses = int(max_ellipses)
        self.microstructure = dict(microstructure or {})
        self.attenuation = attenuation
        self.batch_size, self.num_workers, self.seed = int(batch_size), int(num_workers), int(seed)
        self.projector = ParallelBeamProjector(
            (self.image_size, self.image_size),
            np.linspace(0.0, math.pi, self.n_angles, endpoint=False), n_det=self.n_det,
            center=center)
        self.train_set: SinogramDataset | None = None
        self.val_set: SinogramDataset | None = None

    def make_images(self, n: int, ellipse_fraction: float, seed: int) -> Tensor:
        """``n`` true slices ``(n, H, W)``: ellipses first, then electrode slices (seeded)."""
        n_ell = int(round(n * ellipse_fraction))
        gen = torch.Generator().manual_seed(seed)
        ell = random_ellipses(n_ell, self.image_size, gen, self.max_ellipses)
        elec = electrode_slices(n - n_ell, self.image_size, seed, self.microstructure,
                                self.attenuation)
        return torch.cat([ell, elec])

    def make_set(self, n: int, ellipse_fraction: float, seed: int) -> SinogramDataset:
        """Phantoms and their measured sinograms, all from ``seed``."""
        images = self.make_images(n, ellipse_fraction, seed)
        gen = torch.Generator().manual_seed(seed + 1)
        sinos = simulate_sinograms(images, self.projector, self.photons, self.mu, gen)
        return SinogramDataset(images, sinos)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        base = 1000 * self.seed
        self.train_set = self.make_set(self.train_samples, self.ellipse_fraction, base + 100)
        self.val_set = self.make_set(self.val_samples, self.val_ellipse_fraction, base + 700)

    def held_out(self) -> tuple[Tensor, Tensor]:
        """``(sinograms (N, 1, A, n_det), images (N, 1, H, W))`` of the held-out set."""
        self.setup()
        assert self.val_set is not None
        return self.val_set.sinograms[:, None], self.val_set.images[:, None]

    def fbp(self, sinograms: Tensor, filter_name: str = "ramp") -> Tensor:
        """FBP ``(N, 1, A, n_det) -> (N, 1, H, W)`` in this geometry."""
        return fbp(sinograms[:, 0], self.projector, filter_name)[:, None]

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          num_workers=self.num_workers, drop_last=len(self.train_set) > self.batch_size,
                          generator=torch.Generator().manual_seed(self.seed),
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers)
