"""Simulated XANES spectro-tomography for the CNNs: ``python train.py data=xanes model=xanes_edge``.

Each volume (seeded, :mod:`src.simulation.xanes_scan`) gives 2D z-slices of

* ``input``: the measured stack at the *input* energies, ``(E_in, H, W)``, divided by
  ``input_scale``; with a reduced scan (``n_input_energies`` < the full scan) the photons per
  energy are raised so that the **total dose equals** that of the full scan
  (``photons * n_full / n_input``);
* ``clean``: the noiseless stack at all energies (the denoiser's target), same scale;
* ``edge``: the true half-jump edge energy (eV, NaN outside NMC) and ``mask`` (NMC voxels).

Training samples are random ``crop`` × ``crop`` windows with flips/90° rotations; validation
uses whole slices of separate volumes (own seeds). Volumes are cached as ``.npz`` in
``cache_dir`` (keyed by all parameters) so that several runs share one simulation.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from src.config import to_plain
from src.data.io import atomic_output, to_jsonable
from src.simulation.imaging import ImagingConfig
from src.simulation.microstructure import MicrostructureConfig, generate_microstructure
from src.simulation.xanes_scan import (
    DEFAULT_REFERENCE_DIR,
    XanesSimConfig,
    load_end_members,
    reduced_energy_indices,
    simulate_soc,
    simulate_xanes_stack,
    true_edge_energy,
)

__all__ = ["XanesDataModule", "XanesSliceDataset", "simulate_xanes_volume"]


def simulate_xanes_volume(
    seed: int, shape: Sequence[int], voxel_size_nm: float, sim: XanesSimConfig, imaging: ImagingConfig,
    photons: float | None, input_indices: np.ndarray | None, with_clean: bool,
) -> dict[str, np.ndarray]:
    """Simulate one XANES volume.

    One volume: ``input`` (E_in, z, y, x) at equal total dose, ``clean`` (E, z, y, x) or
    empty, ``edge``, ``soc`` (z, y, x) and ``labels``.
    """
    micro = MicrostructureConfig(shape=tuple(shape), voxel_size_nm=voxel_size_nm)
    labels = generate_microstructure(micro, seed)
    members = load_end_members(sim.reference_dir, sim.edge_discharged_eV, sim.edge_charged_eV)
    soc, _ = simulate_soc(labels, sim, seed)
    edge, _ = true_edge_energy(soc, sim, members)
    energies = sim.energy_grid()
    idx = np.arange(energies.size) if input_indices is None else np.asarray(input_indices)
    dose = None if photons is None else photons * energies.size / idx.size
    stack, _ = simulate_xanes_stack(labels, soc, sim, imaging, seed, energies[idx], dose, members)
    clean = (simulate_xanes_stack(labels, soc, sim, imaging, seed, energies, None, members)[0]
             if with_clean else np.zeros((0,), np.float32))
    return {"input": stack, "clean": clean, "edge": edge, "soc": soc, "labels": labels}


class XanesSliceDataset(Dataset):
    """2D samples from volumes: random crops with flips (``crop``) or whole slices (None)."""

    def __init__(self, volumes: list[dict[str, np.ndarray]], crop: int | None, length: int | None,
                 input_scale: float) -> None:
        self.volumes, self.crop, self.scale = volumes, crop, float(input_scale)
        self.index = [(v, z) for v, vol in enumerate(volumes) for z in range(vol["edge"].shape[0])]
        self.length = len(self.index) if length is None else int(length)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        if self.crop is None:
            v, z = self.index[i % len(self.index)]
            sl: tuple[Any, ...] = (slice(None), slice(None))
            k, flip = 0, False
        else:
            rng = np.random.default_rng(int(torch.randint(2**31 - 1, (1,)).item()))  # seeded globally
            v, z = self.index[int(rng.integers(len(self.index)))]
            h, w = self.volumes[v]["edge"].shape[1:]
            y0, x0 = int(rng.integers(h - self.crop + 1)), int(rng.integers(w - self.crop + 1))
            sl = (slice(y0, y0 + self.crop), slice(x0, x0 + self.crop))
            k, flip = int(rng.integers(4)), bool(rng.integers(2))
        vol = self.volumes[v]

        def view(a: np.ndarray, lead: bool) -> torch.Tensor:
            x = a[:, z][(slice(None), *sl)] if lead else a[z][sl]
            x = np.rot90(x, k, axes=(-2, -1))
            if flip:
                x = x[..., ::-1]
            return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

        edge = view(vol["edge"], False)
        mask = torch.isfinite(edge)
        out = {"input": view(vol["input"], True) / self.scale, "edge": torch.nan_to_num(edge)[None],
               "mask": mask[None]}
        if vol["clean"].size:
            out["clean"] = view(vol["clean"], True) / self.scale
        return out


class XanesDataModule(pl.LightningDataModule):
    """Simulated XANES volumes for the denoiser and the edge-map net.

    The denoiser uses ``target=clean``, the edge-map net ``target=edge``.

    Args:
        shape: volume shape (z, y, x); ``voxel_size_nm``: voxel edge.
        train_seeds, val_seeds: volumes for training and validation (disjoint).
        photons: photons per pixel and energy of the full scan (total dose = this × E).
        n_input_energies: energies fed to the net (None: the full scan; else a reduced scan of
            :func:`~src.simulation.xanes_scan.reduced_energy_indices` at equal total dose).
        target: ``"edge"`` or ``"clean"`` (the latter also simulates noiseless stacks).
        crop: training window side; ``samples_per_epoch``; ``batch_size``; ``num_workers``.
        input_scale: stacks are divided by it (about the NMC absorption per voxel).
        n_angles: projections per energy; ``xanes``: :class:`XanesSimConfig` fields.
        cache_dir: where simulated volumes are cached (None: no cache).
    """

    def __init__(
        self, shape: Sequence[int] = (24, 64, 64), voxel_size_nm: float = 60.0,
        train_seeds: Sequence[int] = (0, 1, 2, 3), val_seeds: Sequence[int] = (100,),
        photons: float | None = 1e4, n_input_energies: int | None = None, target: str = "edge",
        crop: int = 32, samples_per_epoch: int = 512, batch_size: int = 16, num_workers: int = 0,
        input_scale: float = 0.02, n_angles: int = 181, xanes: dict[str, Any] | None = None,
        cache_dir: str | None = None, seed: int = 0,
    ) -> None:
        super().__init__()
        xanes = to_plain(xanes)
        shape, train_seeds, val_seeds = (list(to_plain(v)) for v in (shape, train_seeds, val_seeds))
        self.save_hyperparameters(logger=False)
        if target not in ("edge", "clean"):
            raise ValueError(f"data.target must be 'edge' or 'clean', got {target!r}")
        if set(train_seeds) & set(val_seeds):
            raise ValueError(f"train_seeds {train_seeds} and val_seeds {val_seeds} overlap")
        if crop > min(shape[1:]):
            raise ValueError(f"data.crop {crop} exceeds the slice size {shape[1:]}")
        self.sim = XanesSimConfig(**dict(xanes or {}))
        # one cache key per folder; None: the end-members shipped with the package
        self.sim.reference_dir = str(Path(self.sim.reference_dir or DEFAULT_REFERENCE_DIR).resolve())
        self.imaging = ImagingConfig(n_angles=n_angles)
        self.energies = self.sim.energy_grid()
        self.input_indices = (np.arange(self.energies.size) if n_input_energies in (None, self.energies.size)
                              else reduced_energy_indices(self.energies, int(n_input_energies)))
        self.train_set: XanesSliceDataset | None = None
        self.val_set: XanesSliceDataset | None = None

    @property
    def input_energies(self) -> np.ndarray:
        """The energies fed to the net."""
        return self.energies[self.input_indices]

    def _key(self, seed: int) -> str:
        h = self.hparams
        params = {"seed": seed, "shape": list(h.shape), "voxel": h.voxel_size_nm, "photons": h.photons,
                  "idx": self.input_indices.tolist(), "clean": h.target == "clean",
                  "sim": to_jsonable(self.sim), "imaging": to_jsonable(self.imaging), "v": 1}
        return hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]

    def volume(self, seed: int) -> dict[str, np.ndarray]:
        """The simulated volume of ``seed`` (from the cache when present)."""
        h = self.hparams
        path = Path(h.cache_dir) / f"xanes_{seed}_{self._key(seed)}.npz" if h.cache_dir else None
        if path is not None and path.exists():
            with np.load(path) as f:
                return {k: f[k] for k in f.files}
        vol = simulate_xanes_volume(seed, h.shape, h.voxel_size_nm, self.sim, self.imaging, h.photons,
                                    self.input_indices, h.target == "clean")
        if path is not None:
            with atomic_output(path) as tmp, open(tmp, "wb") as f:
                np.savez(f, **vol)
        return vol

    def prepare_data(self) -> None:
        """Simulate (and cache) every training and validation volume."""
        for s in [*self.hparams.train_seeds, *self.hparams.val_seeds]:
            self.volume(s)

    def setup(self, stage: str | None = None) -> None:
        """Build the training and validation slice datasets (once)."""
        if self.train_set is not None:
            return
        h = self.hparams
        train = [self.volume(s) for s in h.train_seeds]
        val = [self.volume(s) for s in h.val_seeds]
        self.train_set = XanesSliceDataset(train, h.crop, h.samples_per_epoch, h.input_scale)
        self.val_set = XanesSliceDataset(val, None, None, h.input_scale)

    def train_dataloader(self) -> DataLoader:
        """Return the shuffled (seeded) loader of training slices."""
        return DataLoader(self.train_set, batch_size=self.hparams.batch_size, shuffle=True,
                          num_workers=self.hparams.num_workers, drop_last=True,
                          generator=torch.Generator().manual_seed(self.hparams.seed))

    def val_dataloader(self) -> DataLoader:
        """Return the loader of validation slices, in order."""
        return DataLoader(self.val_set, batch_size=self.hparams.batch_size, shuffle=False,
                          num_workers=self.hparams.num_workers)

