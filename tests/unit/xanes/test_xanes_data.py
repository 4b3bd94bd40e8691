"""XANES data: spectral stacks and energies on disk, alignment, the spectro-tomography simulator."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
import tifffile
from scipy import ndimage

from src.data.io.spectra import XanesInputError, read_energies, read_spectral_stack
from src.simulation.imaging import ImagingConfig
from src.simulation.microstructure import MicrostructureConfig
from src.simulation.xanes_scan import (
    SIMULATION_RANGES,
    XanesSimConfig,
    default_energies,
    load_end_members,
    make_xanes_sample,
    reduced_energy_indices,
    write_xanes_sample,
)
from src.xanes.alignment import align_stack
from src.xanes.maps import XanesAnalysisConfig, analyze_stack
from tests.helpers import shared_data

SHAPE = (16, 40, 40)


@pytest.fixture(scope="module")
def sim_cfg() -> XanesSimConfig:
    return XanesSimConfig(reference_dir=str(shared_data("xanes")))


@pytest.fixture(scope="module")
def samples(sim_cfg):
    """The same electrode without noise and at the default dose (10^4 photons per pixel)."""
    micro = MicrostructureConfig(shape=SHAPE, voxel_size_nm=60.0)
    return {p: make_xanes_sample(0, micro, sim_cfg, ImagingConfig(), p) for p in (None, 1e4)}


def _fit(sample):
    m = sample.members
    refs = [(m.energies, m.discharged), (m.energies, m.charged)]
    nmc = sample.labels == 0
    return analyze_stack(sample.energies, sample.stack, nmc, refs, ["Ni2", "Ni3"],
                         XanesAnalysisConfig(ranges=SIMULATION_RANGES)), nmc


def _rmse(a, b, mask):
    d = (a - b)[mask]
    assert np.isfinite(d).mean() > 0.99
    return float(np.sqrt(np.nanmean(d ** 2)))


# ------------------------------------------------------------------ I/O
def test_read_energies_formats_and_errors(tmp_path):
    (tmp_path / "e.txt").write_text("# energy\n8.340\n8.341\n8.342\n")  # keV
    assert np.allclose(read_energies(tmp_path / "e.txt"), [8340, 8341, 8342])
    (tmp_path / "e.csv").write_text("8340.0, 1\n8341.0, 2\n")
    assert np.allclose(read_energies(tmp_path / "e.csv"), [8340, 8341])
    np.save(tmp_path / "e.npy", np.array([8330.0, 8335.0]))
    assert read_energies(tmp_path / "e.npy").size == 2
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["energy"] = np.array([8340.0, 8342.0, 8344.0])
    assert np.allclose(read_energies(f"{tmp_path}/s.h5:/energy"), [8340, 8342, 8344])
    (tmp_path / "bad.txt").write_text("8342\n8341\n")
    with pytest.raises(XanesInputError, match="bad.txt.*strictly increasing"):
        read_energies(tmp_path / "bad.txt")
    with pytest.raises(XanesInputError, match="not found"):
        read_energies(tmp_path / "missing.txt")


def test_read_spectral_stack_formats_and_errors(tmp_path):
    rng = np.random.default_rng(0)
    s3, s4 = rng.random((5, 8, 9), np.float32), rng.random((5, 4, 8, 9), np.float32)
    tifffile.imwrite(tmp_path / "s3.tif", s3)
    tifffile.imwrite(tmp_path / "s4.tif", s4)
    assert np.array_equal(read_spectral_stack(tmp_path / "s3.tif", 5), s3)
    assert np.array_equal(read_spectral_stack(tmp_path / "s4.tif", 5), s4)
    for i in range(5):
        tifffile.imwrite(tmp_path / "folder" / f"e{i}.tif", s3[i]) if (tmp_path / "folder").exists() else (
            (tmp_path / "folder").mkdir(), tifffile.imwrite(tmp_path / "folder" / f"e{i}.tif", s3[i]))
    assert np.array_equal(read_spectral_stack(tmp_path / "folder", 5), s3)
    with h5py.File(tmp_path / "s.h5", "w") as f:
        f["exchange/data"] = s4
    assert np.array_equal(read_spectral_stack(f"{tmp_path}/s.h5:/exchange/data", 5), s4)
    assert np.array_equal(read_spectral_stack(tmp_path / "s.h5", 5), s4)  # the only 3D+ dataset
    with pytest.raises(XanesInputError, match="5 images along the energy axis but 6"):
        read_spectral_stack(tmp_path / "s3.tif", 6)
    tifffile.imwrite(tmp_path / "t.tif", np.moveaxis(s3, 0, -1).copy())
    with pytest.raises(XanesInputError, match="energy axis looks last"):
        read_spectral_stack(tmp_path / "t.tif", 5)
    tifffile.imwrite(tmp_path / "nan.tif", np.full((5, 4, 4), np.nan, np.float32))
    with pytest.raises(XanesInputError, match="NaN"):
        read_spectral_stack(tmp_path / "nan.tif", 5)


@pytest.mark.parametrize("ndim", [2, 3])
def test_align_stack_recovers_subpixel_drift(ndim):
    """Known sub-pixel drifts, an edge-like contrast change and 10 % noise per energy: the mean
    reference (default) recovers every drift within 0.05 px up to the common translation, and
    anchors the stack at the mean position; a single noisy energy as reference does worse."""
    rng = np.random.default_rng(3)
    shape = (48, 48) if ndim == 2 else (24, 40, 40)
    n_e = 12
    base = ndimage.gaussian_filter(rng.random(shape), 2.0)
    base = (base - base.mean()) / base.std()
    drift = rng.uniform(-2.5, 2.5, (n_e, ndim))
    contrast = np.linspace(0.6, 1.0, n_e)  # edge contrast changes with energy
    stack = np.stack([c * ndimage.shift(base, d, order=3, mode="wrap") for c, d in zip(contrast, drift, strict=True)])
    stack += rng.normal(0, 0.1, stack.shape)
    aligned, shifts = align_stack(stack, upsample_factor=50)
    rel = shifts + drift - (shifts + drift).mean(0)  # applied shift = - drift + a common translation
    print(f"{ndim}D: max residual {np.abs(rel).max():.3f} px, rms {np.sqrt(np.mean(rel ** 2)):.3f} px")
    assert np.abs(rel).max() < 0.05
    assert np.allclose(shifts.mean(0), 0.0, atol=1e-9)  # anchored at the mean position
    assert np.abs(shifts + drift - drift.mean(0)).max() < 0.05
    inner = (slice(None),) + (slice(4, -4),) * ndim
    truth = np.stack([c * ndimage.shift(base, d, order=3, mode="wrap")
                      for c, d in zip(contrast, np.broadcast_to(drift.mean(0), drift.shape), strict=True)])
    before = np.abs(stack - truth)[inner].mean()
    after = np.abs(aligned - truth)[inner].mean()
    assert after < 0.5 * before
    _, single = align_stack(stack, reference=-1, upsample_factor=50)  # the former default
    assert np.allclose(single[-1], 0.0)  # anchored at the reference energy
    rel_single = single + drift - (single + drift).mean(0)
    assert np.sqrt(np.mean(rel_single ** 2)) > np.sqrt(np.mean(rel ** 2))
    with pytest.raises(ValueError, match="reference"):
        align_stack(stack, reference="median")


# ------------------------------------------------------------------ simulator
def test_end_members_hit_the_nmc_anchors(sim_cfg):
    m = load_end_members(sim_cfg.reference_dir)
    for y, target in ((m.discharged, 8346.0), (m.charged, 8348.5)):
        half = m.energies[np.argmax(y / y.max() >= 0.5)]
        assert abs(half - target) < 0.1
    idx = reduced_energy_indices(default_energies(), 15)
    assert idx.size == 15 and np.all(np.diff(idx) > 0)
    assert default_energies().size == 60


def test_simulated_truth_has_particle_and_core_shell_heterogeneity(samples):
    s = samples[None]
    nmc = s.labels == 0
    assert np.isnan(s.soc[~nmc]).all() and np.isfinite(s.soc[nmc]).all()
    assert np.isfinite(s.edge_energy[nmc]).all() and np.isnan(s.edge_energy[~nmc]).all()
    means = ndimage.mean(s.soc, s.particles, np.arange(1, s.particles.max() + 1))
    assert np.std(means) > 0.1  # particle to particle
    surface = nmc & ~ndimage.binary_erosion(nmc)
    core = ndimage.binary_erosion(nmc, iterations=3)
    assert s.soc[surface].mean() > s.soc[core].mean() + 0.05  # charged shell, discharged core
    edge = s.edge_energy[nmc]
    assert 8343.0 < edge.min() < edge.max() < 8346.0 and edge.max() - edge.min() > 1.0
    # CBD and pore are nearly flat: their edge jump is far below NMC's
    grey_jump = s.stack[-1] - s.stack[0]
    assert np.median(grey_jump[s.labels == 2]) < 0.2 * np.median(grey_jump[nmc])


def test_per_voxel_fit_against_truth(samples):
    clean, nmc = _fit(samples[None])
    noisy, _ = _fit(samples[1e4])
    truth = samples[None].edge_energy
    assert _rmse(clean["edge_energy"], truth, nmc) <= 0.1
    assert _rmse(clean["edge_energy_lcf"], truth, nmc) <= 0.1
    assert _rmse(noisy["edge_energy_lcf"], truth, nmc) <= 0.5
    half = _rmse(noisy["edge_energy"], truth, nmc)  # model-free half jump at the default dose
    s = samples[1e4]
    m = s.members
    former = analyze_stack(s.energies, s.stack, nmc, [(m.energies, m.discharged), (m.energies, m.charged)], None,
                           XanesAnalysisConfig(ranges=SIMULATION_RANGES, shared_shape=False, edge_method="crossing"))
    half_former = _rmse(former["edge_energy"], truth, nmc)
    print(f"half jump RMSE at 1e4 photons: {half:.3f} eV (former estimator {half_former:.3f} eV)")
    assert half <= 0.5 and half < 0.75 * half_former
    assert _rmse(noisy["soc"], samples[1e4].soc, nmc) <= 0.1
    assert set(clean) >= {"jump", "valid", "white_line", "edge_energy_slope", "oxidation_state"}
    assert np.isnan(clean["edge_energy"][~nmc]).all()


def test_write_xanes_sample(samples, tmp_path):
    paths = write_xanes_sample(tmp_path, samples[None])
    assert read_spectral_stack(paths["stack"], read_energies(paths["energies"]).size).shape == (60, *SHAPE)
    assert np.allclose(tifffile.imread(paths["edge_energy"]), samples[None].edge_energy, equal_nan=True)
    assert paths["meta"].exists() and paths["discharged"].exists()
