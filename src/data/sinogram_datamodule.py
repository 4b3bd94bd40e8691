"""The DataModule of simulated sinograms for the learned reconstruction models.

Sinograms from :mod:`src.simulation.sinograms`:
``{"sinogram": (1, A, n_det), "image": (1, H, W)}`` samples, generated
batched in torch from the seed and kept in memory.
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
from src.simulation.sinograms import (
    attenuation_unit,
    electrode_slices,
    random_ellipses,
    simulate_sinograms,
)

__all__ = ["SinogramDataModule", "SinogramDataset"]


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
        """Generate the training and validation sets (once)."""
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
        """Return the shuffled (seeded) loader of training samples."""
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=True,
                          num_workers=self.num_workers, drop_last=len(self.train_set) > self.batch_size,
                          generator=torch.Generator().manual_seed(self.seed),
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        """Return the loader of validation samples, in order."""
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers)
