"""Tests of the synthetic microstructure, the nano-CT simulator and the on-disk cache."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from scipy import ndimage

from src.simulation.electrode_volumes import main, make_synthetic_volume
from src.simulation.imaging import ImagingConfig, simulate_tomography
from src.simulation.microstructure import (
    PHASES,
    MicrostructureConfig,
    generate_microstructure,
    phase_fractions,
)

SMALL = MicrostructureConfig(shape=(48, 64, 64), voxel_size_nm=60.0)
FAST_IMAGING = ImagingConfig(n_angles=61)


@pytest.fixture(scope="module")
def small_labels() -> np.ndarray:
    return generate_microstructure(SMALL, seed=3)


def test_deterministic_from_seed(small_labels: np.ndarray) -> None:
    again = generate_microstructure(SMALL, seed=3)
    np.testing.assert_array_equal(again, small_labels)
    assert not np.array_equal(generate_microstructure(SMALL, seed=4), small_labels)


@pytest.mark.parametrize(("nmc", "cbd", "seed"), [(0.50, 0.15, 0), (0.45, 0.20, 1), (0.55, 0.10, 2)])
def test_fractions_and_label_values(nmc: float, cbd: float, seed: int) -> None:
    cfg = MicrostructureConfig(shape=(40, 56, 56), nmc_fraction=nmc, cbd_fraction=cbd,
                               voxel_size_nm=60.0)
    labels = generate_microstructure(cfg, seed)
    assert labels.dtype == np.uint8 and labels.shape == cfg.shape
    assert set(np.unique(labels)) <= {0, 1, 2}
    frac = phase_fractions(labels)
    assert abs(frac["NMC"] - nmc) <= 0.02
    assert abs(frac["CBD"] - cbd) <= 0.02
    assert abs(frac["pore"] - (1 - nmc - cbd)) <= 0.02


def test_cracks_are_enclosed_pore() -> None:
    cfg = MicrostructureConfig(shape=(64, 64, 64), cracked_fraction=0.6)
    labels = generate_microstructure(cfg, seed=5)
    nmc, pore = labels == PHASES.index("NMC"), labels == PHASES.index("pore")
    enclosed = ndimage.binary_fill_holes(nmc) & pore
    assert np.count_nonzero(enclosed) > 20
    no_cracks = generate_microstructure(
        MicrostructureConfig(shape=(64, 64, 64), cracked_fraction=0.0), seed=5)
    filled = ndimage.binary_fill_holes(no_cracks == 0) & (no_cracks == 2)
    assert np.count_nonzero(filled) < np.count_nonzero(enclosed)


def test_cbd_sits_near_particles(small_labels: np.ndarray) -> None:
    dist = ndimage.distance_transform_edt(small_labels != 0)  # voxels to the nearest NMC
    cbd, pore = small_labels == 1, small_labels == 2
    assert dist[cbd].mean() < dist[pore].mean()


def test_invalid_config() -> None:
    with pytest.raises(ValueError):
        MicrostructureConfig(nmc_fraction=0.8, cbd_fraction=0.3)


def test_imaging_output_and_phase_order(small_labels: np.ndarray) -> None:
    grey = simulate_tomography(small_labels, FAST_IMAGING, seed=0)
    assert grey.shape == small_labels.shape and grey.dtype == np.float32
    assert np.isfinite(grey).all()
    means = [grey[small_labels == k].mean() for k in range(3)]
    assert means[0] > means[1] > means[2]  # NMC > CBD > pore
    np.testing.assert_array_equal(grey, simulate_tomography(small_labels, FAST_IMAGING, seed=0))


def test_phase_density_texture(small_labels: np.ndarray) -> None:
    """cbd_density_std mottles CBD's grey (nano-porosity) and leaves the noise draws alone."""
    from dataclasses import replace

    noiseless = replace(FAST_IMAGING, photons=1e9, ring_strength=0.0, halo_strength=0.0, detector_blur_px=0.0)
    inner = {k: ndimage.binary_erosion(small_labels == k, iterations=2) for k in range(3)}
    flat = simulate_tomography(small_labels, noiseless, seed=0)
    mottled = simulate_tomography(small_labels, replace(noiseless, cbd_density_std=0.5), seed=0)
    cbd, nmc = PHASES.index("CBD"), PHASES.index("NMC")
    assert mottled[inner[cbd]].std() > 2 * flat[inner[cbd]].std()
    assert mottled[inner[nmc]].std() == pytest.approx(flat[inner[nmc]].std(), rel=0.2)
    assert mottled[inner[cbd]].mean() == pytest.approx(flat[inner[cbd]].mean(), rel=0.1)
    np.testing.assert_array_equal(mottled, simulate_tomography(small_labels, replace(noiseless, cbd_density_std=0.5), seed=0))
    with pytest.raises(ValueError, match="cbd_density_std"):
        ImagingConfig(cbd_density_std=-0.1)


def test_small_volume_generation_is_fast() -> None:
    start = time.perf_counter()
    labels = generate_microstructure(MicrostructureConfig(shape=(64, 64, 64)), seed=0)
    simulate_tomography(labels, ImagingConfig(), seed=0)
    assert time.perf_counter() - start < 20.0  # seen ~1.5 s on 2 cores


def test_cache_and_metadata(tmp_path) -> None:
    micro = MicrostructureConfig(shape=(24, 32, 32), voxel_size_nm=80.0)
    paths = make_synthetic_volume(tmp_path, 7, micro, FAST_IMAGING, name="vol", progress=False)
    assert set(paths) == {"image", "label", "meta"} and all(p.exists() for p in paths.values())
    meta = json.loads(paths["meta"].read_text())
    assert meta["seed"] == 7 and meta["voxel_size_nm"] == 80.0 and meta["shape"] == [24, 32, 32]
    assert set(meta["measured_fractions"]) == {"NMC", "CBD", "pore"}
    assert abs(meta["measured_fractions"]["NMC"] - meta["target_fractions"]["NMC"]) <= 0.02
    assert meta["parameters"]["imaging"]["n_angles"] == FAST_IMAGING.n_angles
    assert "version" in meta["software"] and meta["generation_time_s"] >= 0
    mtimes = {k: p.stat().st_mtime_ns for k, p in paths.items()}
    again = make_synthetic_volume(tmp_path, 7, micro, FAST_IMAGING, name="vol", progress=False)
    assert again == paths and {k: p.stat().st_mtime_ns for k, p in again.items()} == mtimes
    # other parameters regenerate
    make_synthetic_volume(tmp_path, 8, micro, FAST_IMAGING, name="vol", progress=False)
    assert json.loads(paths["meta"].read_text())["seed"] == 8
    import tifffile

    assert tifffile.imread(paths["image"]).dtype == np.float32
    assert tifffile.imread(paths["label"]).dtype == np.uint8
    assert not list(tmp_path.glob(".*tmp"))


def test_cli(tmp_path) -> None:
    main(["--out", str(tmp_path), "--seeds", "0", "--shape", "16", "24", "24",
          "--n-angles", "31", "--quiet"])
    assert len(list(tmp_path.glob("*_image.tif"))) == 1
    assert len(list(tmp_path.glob("*.json"))) == 1
