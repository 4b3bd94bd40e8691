"""Synthetic evolution series: configured shrinkage, crack growth, CBD detachment, drift, files."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml

from src.data.io import read_image
from src.simulation.evolution_series import (
    EvolutionConfig,
    cbd_coverage,
    main,
    simulate_evolution,
    write_evolution_series,
)
from src.simulation.microstructure import MicrostructureConfig

MICRO = MicrostructureConfig(shape=(64, 64, 64), voxel_size_nm=80.0)
EVO = EvolutionConfig(states=3, shrink_percent=3.0, crack_growth_percent=1.0, detach_percent=15.0)


@pytest.fixture(scope="module")
def series():
    return simulate_evolution(MICRO, EVO, seed=0)


def test_configured_changes_are_exact_in_the_truth(series):
    truths = [s.truth for s in series]
    assert [s.labels.shape for s in series] == [(64, 64, 64)] * 3
    assert all(s.labels.dtype == np.uint8 for s in series)
    # same particles (simulator ids) in every state, each keeping (1 - 3 %)^k of its volume
    ids0 = truths[0]["particles"]["id"]
    hull0 = np.array(truths[0]["particles"]["hull_voxels"], float)
    assert len(ids0) > 30
    for k, t in enumerate(truths):
        # ids persist (a particle barely inside the view may leave it as it shrinks)
        ids = t["particles"]["id"]
        assert set(ids) <= set(ids0) and len(ids) >= len(ids0) - 3
        h0 = hull0[np.searchsorted(ids0, ids)]
        ratio = np.array(t["particles"]["hull_voxels"]) / h0
        assert np.all(np.abs(ratio - 0.97**k) <= 1.0 / h0 + 1e-12)
        assert t["volume_scale"] == pytest.approx(0.97**k)
        assert t["radius_scale"] == pytest.approx(0.97 ** (k / 3))
    crack = [t["crack_porosity"] for t in truths]
    assert np.diff(crack) == pytest.approx([0.01, 0.01], abs=2e-4)
    assert np.all(np.diff([t["volume_fraction"]["NMC"] for t in truths]) < 0)
    assert np.all(np.diff([t["volume_fraction"]["CBD"] for t in truths]) < 0)
    assert np.all(np.diff([t["cbd_coverage_of_nmc"] for t in truths]) < 0)
    assert [t["cbd_detached_fraction"] for t in truths] == pytest.approx([0, 0.15, 0.30], abs=1e-3)
    assert [t["soc"] for t in truths] == [0.0, 0.5, 1.0]
    assert np.all(np.diff([t["voltage"] for t in truths]) > 0)
    assert cbd_coverage(series[0].labels) == pytest.approx(truths[0]["cbd_coverage_of_nmc"])


def test_changes_are_nested_and_deterministic(series):
    a, b = series[1].labels, series[2].labels
    assert not np.any((a != 1) & (b == 1))  # what detached stays detached
    small = MicrostructureConfig(shape=(32, 32, 32), voxel_size_nm=80.0)
    once, again = (simulate_evolution(small, EVO, seed=0) for _ in range(2))
    assert all(np.array_equal(x.labels, y.labels) for x, y in zip(once, again, strict=True))
    other = simulate_evolution(small, EVO, seed=1)
    assert not np.array_equal(once[0].labels, other[0].labels)


def test_ground_truth_masks_and_enclosed_cracks(series):
    from scipy import ndimage

    for s in series:
        assert np.array_equal(s.cracks, (s.particle_ids > 0) & (s.labels == 2))
        assert np.array_equal(s.particle_ids > 0, (s.labels == 0) | s.cracks)
        # cracks of particles away from the faces are enclosed in the NMC (fill_holes sees them)
        ids = s.particle_ids
        face = np.unique(np.concatenate([np.take(ids, e, axis=a).ravel()
                                         for a in range(3) for e in (0, -1)]))
        interior = s.cracks & ~np.isin(ids, face)
        assert interior.sum() > 100
        assert np.all(ndimage.binary_fill_holes(s.labels == 0)[interior])


def test_drift_crops_a_shifted_field_of_view():
    micro = MicrostructureConfig(shape=(32, 32, 32), voxel_size_nm=80.0)
    evo = EvolutionConfig(states=2, shrink_percent=0.0, crack_growth_percent=0.0,
                          detach_percent=0.0, drift_vox=3)
    s0, s1 = simulate_evolution(micro, evo, seed=3)
    shift = np.array(s1.truth["shift_vox"])
    assert s0.truth["shift_vox"] == [0, 0, 0] and np.abs(shift).max() <= 3 and shift.any()
    # without change, state 1 is state 0 moved by -shift: s1[x] == s0[x + shift] on the overlap
    lo, hi = np.maximum(0, -shift), np.minimum(32, 32 - shift)
    view1 = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    view0 = tuple(slice(a + d, b + d) for a, b, d in zip(lo, hi, shift, strict=True))
    assert np.array_equal(s1.labels[view1], s0.labels[view0])


def test_write_series_cli_and_manifests(tmp_path):
    out = tmp_path / "evo"
    main(["--out", str(out), "--states", "2", "--shape", "24", "24", "24", "--voxel-size-nm", "80",
          "--shrink-percent", "5", "--soc-start", "0.2", "--soc-end", "0.8", "--hours-per-state", "2"])
    with open(out / "manifest.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["state_00", "state_01"]
    assert [float(r["soc"]) for r in rows] == [0.2, 0.8]
    assert [float(r["time_h"]) for r in rows] == [0.0, 2.0]
    assert float(rows[0]["voxel_size_nm"]) == 80.0
    labels = read_image(out / rows[1]["path"])
    assert labels.shape == (24, 24, 24) and labels.dtype == np.uint8
    truth = json.loads((out / rows[1]["truth"]).read_text())
    assert truth["volume_scale"] == pytest.approx(0.95)
    assert truth["volume_fraction"]["NMC"] == pytest.approx(float((np.asarray(labels) == 0).mean()))
    assert truth["parameters"]["evolution"]["shrink_percent"] == 5.0
    listed = yaml.safe_load((out / "manifest.yaml").read_text())["states"]
    assert [r["path"] for r in listed] == [r["path"] for r in rows]
    assert not list(out.glob(".*tmp*"))


def test_write_series_with_imaging(tmp_path):
    from src.simulation.imaging import ImagingConfig

    micro = MicrostructureConfig(shape=(16, 24, 24), voxel_size_nm=80.0)
    manifest = write_evolution_series(tmp_path, micro, EvolutionConfig(states=2), seed=0,
                                      imaging=ImagingConfig(n_angles=24))
    with open(manifest) as f:
        rows = list(csv.DictReader(f))
    grey = read_image(tmp_path / rows[1]["image"])
    assert grey.shape == (16, 24, 24) and grey.dtype == np.float32 and np.isfinite(grey).all()


def test_bad_configuration():
    with pytest.raises(ValueError, match="shrink_percent"):
        EvolutionConfig(shrink_percent=100)
    with pytest.raises(ValueError, match="states"):
        EvolutionConfig(states=0)
    with pytest.raises(ValueError, match="soc_start"):
        EvolutionConfig(soc_start=1.5)
