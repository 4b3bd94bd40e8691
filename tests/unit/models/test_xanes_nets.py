"""XANES denoiser pieces: the spectral basis of SpectralSpatialDenoiser and the weighted loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.models.nets.spectral import SpectralSpatialDenoiser
from src.models.spectral import XanesModule


def test_spectral_basis_is_the_pca_projection_and_removes_noise():
    """Rank-3 spectra (as in the simulator: background + two end-members) plus white noise: the
    net initialised from the clean spectra projects each voxel onto their 3 components, which
    removes about (E - 3) / E of the noise power."""
    rng = np.random.default_rng(0)
    n_e = 60
    basis = rng.normal(size=(3, n_e))
    coef = rng.normal(size=(2, 3, 16, 16))
    clean = np.einsum("bkhw,ke->behw", coef, basis) + 1.0
    noisy = clean + rng.normal(0, 0.1, clean.shape)
    net = SpectralSpatialDenoiser(n_energies=n_e, components=3, width=8, blocks=2)
    spectra = torch.from_numpy(clean).permute(0, 2, 3, 1).reshape(-1, n_e)
    net.init_spectral_basis(spectra)
    with torch.no_grad():
        out = net(torch.from_numpy(noisy).float()).double().numpy()
    before = np.mean((noisy - clean) ** 2)
    after = np.mean((out - clean) ** 2)
    assert after < 0.1 * before, (after, before)
    assert after == pytest.approx(before * 3 / n_e, rel=0.3)
    with pytest.raises(ValueError, match="spectra must be"):
        net.init_spectral_basis(spectra[:, :10])


def test_denoiser_loss_weights_nmc_voxels_and_edge_energies():
    energies = np.round(np.concatenate([np.arange(8290.0, 8331.0, 10.0), 8334 + 0.6 * np.arange(51),
                                        [8375.0, 8400.0, 8425.0, 8450.0]]), 3)
    net = {"_target_": "src.models.nets.spectral.SpectralSpatialDenoiser", "components": 3, "width": 4}
    ranges = {"e0": 8346.0, "pre": [-60.0, -14.0], "post": [25.0, 105.0]}
    plain = XanesModule(net, task="denoise", scan_energies=energies.tolist(), ranges=ranges)
    weighted = XanesModule(net, task="denoise", scan_energies=energies.tolist(), ranges=ranges,
                           nmc_weight=4.0, edge_weight=2.0)
    clean = torch.zeros(1, 60, 4, 4)
    mask = torch.zeros(1, 1, 4, 4, dtype=torch.bool)
    mask[..., :2, :] = True  # half the voxels are NMC
    on_nmc, off_nmc = clean.clone(), clean.clone()
    on_nmc[..., :2, :] = 1.0
    off_nmc[..., 2:, :] = 1.0
    batch = {"clean": clean, "mask": mask}
    assert plain._loss(batch, on_nmc) == pytest.approx(plain._loss(batch, off_nmc).item())
    assert weighted._loss(batch, on_nmc) == pytest.approx(4 * weighted._loss(batch, off_nmc).item())
    edge = torch.zeros_like(clean)
    edge[:, 5:56] = 1.0  # the energies of the edge window (8334-8364 eV lie in 8334-8358 or not)
    inside = (energies >= 8334.0) & (energies <= 8358.0)
    expect = 2.0 * inside[5:56].sum() + (~inside[5:56]).sum()
    total = 2.0 * inside.sum() + (~inside).sum()
    ratio = weighted._loss({"clean": clean, "mask": torch.zeros_like(mask)}, edge).item()
    assert ratio == pytest.approx(expect / total, rel=1e-5)
