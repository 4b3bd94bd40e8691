"""Uncertainty maps, calibration and "label here next" (src/analysis/uncertainty.py), and the
active-labelling check on synthetic electrodes: labelling the suggested regions improves mIoU
more than labelling random regions of the same area."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from src.analysis.metrics import confusion_matrix, scores_from_confusion
from src.analysis.segmenters import RandomForestSegmenter
from src.analysis.uncertainty import (
    calibration,
    predictive_entropy,
    rank_regions,
    save_reliability_diagram,
    save_suggestions_png,
    write_suggestions_csv,
)
from src.simulation.microstructure import MicrostructureConfig, generate_microstructure
from src.simulation.scribbles import draw_scribbles, regions_mask


def test_entropy_bounds_and_values():
    p = np.zeros((3, 2, 2), np.float32)
    p[0, 0, 0] = 1.0  # certain
    p[:, 0, 1] = 1 / 3  # uniform
    p[:2, 1, :] = 0.5  # two-way tie
    h = predictive_entropy(p)
    assert h[0, 0] == pytest.approx(0.0, abs=1e-6)
    assert h[0, 1] == pytest.approx(np.log(3), rel=1e-5)
    assert h[1, 0] == pytest.approx(np.log(2), rel=1e-5)
    assert predictive_entropy(p, normalized=True).max() == pytest.approx(1.0, rel=1e-5)
    with pytest.raises(ValueError, match=r"\(C, \.\.\.\)"):
        predictive_entropy(np.ones(4))


def test_calibration_ece_on_known_bins_and_ignored_voxels(tmp_path):
    # 100 voxels at confidence 0.9: 90 right -> calibrated; 100 at 0.6, 30 right -> gap 0.3
    n = 200
    probs = np.zeros((2, n), np.float32)
    probs[0, :100], probs[1, :100] = 0.9, 0.1
    probs[0, 100:], probs[1, 100:] = 0.6, 0.4
    labels = np.zeros(n, np.int64)
    labels[90:100] = 1
    labels[130:200] = 1
    sparse = np.concatenate([labels, np.full(50, 255)])
    probs_sparse = np.concatenate([probs, np.full((2, 50), 0.5, np.float32)], 1)
    report = calibration(probs_sparse, sparse, ignore_index=255, n_bins=10)
    assert report["n_voxels"] == n  # the 50 unlabelled voxels count nowhere
    assert report["ece"] == pytest.approx(0.5 * 0.0 + 0.5 * 0.3, abs=1e-6)
    assert report["accuracy"] == pytest.approx((90 + 30) / 200)
    png = save_reliability_diagram(report, tmp_path / "rel.png")
    assert png.stat().st_size > 1000
    with pytest.raises(ValueError, match="do not match"):
        calibration(probs, labels[:10])


def test_rank_regions_orders_by_mean_and_writes_csv_png(tmp_path):
    u = np.zeros((2, 128, 100), np.float32)
    u[1, 64:128, 0:64] = 2.0  # the most uncertain square
    u[0, 0:64, 64:100] = 3.0  # at the border: inside the last square (x 36..100)
    u[0] += 0.01
    slices, regions = rank_regions(u, 64)
    assert [s["slice"] for s in slices] == [1, 0]
    assert (regions[0]["slice"], regions[0]["y0"], regions[0]["x0"]) == (1, 64, 0)
    assert (regions[1]["slice"], regions[1]["x0"], regions[1]["x1"]) == (0, 36, 100)
    assert all((r["y1"] - r["y0"], r["x1"] - r["x0"]) == (64, 64) for r in regions)  # same area
    assert [r["rank"] for r in regions] == list(range(1, len(regions) + 1))
    assert len(regions) == 2 * 2 * 2
    csv = write_suggestions_csv(regions[:3], tmp_path / "s.csv").read_text().splitlines()
    assert csv[0] == "rank,slice,y0,y1,x0,x1,mean_uncertainty" and csv[1].startswith("1,1,64,128,0,64,2")
    png = save_suggestions_png(np.random.default_rng(0).random(u.shape), u, regions, tmp_path / "s.png")
    assert png.stat().st_size > 1000
    # along another axis: slices are taken along x
    assert rank_regions(u, 32, axis=2)[0][0]["slice"] >= 64  # the x columns of the 3.0 strip


def _synthetic_electrode_slices(seed: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """(8, 96, 96) labels of a simulated electrode and a grey image whose right half is
    shifted in grey (illumination drift across the field of view)."""
    lab = generate_microstructure(MicrostructureConfig(shape=(8, 96, 96)), seed=seed)
    rng = np.random.default_rng(0)
    shade = np.where(np.arange(96) >= 48, 0.45, 0.0)[None, :]
    means = np.array([1.0, 0.5, 0.15])
    img = np.stack([ndimage.gaussian_filter(means[s], 0.8) + shade + rng.normal(0, 0.06, s.shape) for s in lab])
    return lab, img.astype(np.float32)


def test_labelling_suggested_regions_beats_random_regions():
    """Scribbles on the left half of four slices; the forest's entropy ranks 16² regions of
    those slices; four regions are labelled in full: the suggested ones against random ones
    (the mean of three draws), and the forest is refitted; mIoU on four other slices."""
    pool, test, side, k = [0, 1, 2, 3], [4, 5, 6, 7], 16, 4
    left = np.zeros((96, 96), bool)
    left[:, :48] = True
    gains = []
    lab, img = _synthetic_electrode_slices()
    for seed in (0, 1):

        def fit(scribbles: list[np.ndarray], seed: int = seed) -> RandomForestSegmenter:
            return RandomForestSegmenter(n_estimators=30, samples_per_class=1000, seed=seed).fit(
                [img[z] for z in pool], scribbles)

        def miou(forest: RandomForestSegmenter, lab: np.ndarray = lab, img: np.ndarray = img) -> float:
            cm = sum(confusion_matrix(forest.predict(img[z]), lab[z], 3) for z in test)
            return scores_from_confusion(cm, ["NMC", "CBD", "pore"])["miou"]

        def labelled(regions: list[dict], scribbles: list[np.ndarray], lab: np.ndarray = lab) -> list[np.ndarray]:
            out = [s.copy() for s in scribbles]
            for r in regions:
                m = regions_mask(lab.shape[1:], [r])
                out[r["slice"]][m] = lab[pool[r["slice"]]][m]
            return out

        scribbles = [draw_scribbles(lab[z], 0.02, 3, erosion=1, seed=seed + 10 * z, within=left) for z in pool]
        forest = fit(scribbles)
        before = miou(forest)
        entropy = np.stack([predictive_entropy(np.moveaxis(forest.predict_proba(img[z]), -1, 0)) for z in pool])
        _, regions = rank_regions(entropy, side)
        suggested = miou(fit(labelled(regions[:k], scribbles))) - before
        rng = np.random.default_rng(seed)
        random_gain = np.mean([miou(fit(labelled([regions[i] for i in rng.choice(len(regions), k, replace=False)],
                                                 scribbles))) - before for _ in range(3)])
        gains.append((suggested, random_gain))
        assert suggested > random_gain, (seed, before, suggested, random_gain)
    assert np.mean([s - r for s, r in gains]) > 0.05, gains
