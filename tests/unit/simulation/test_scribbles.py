"""Programmatic scribbles (src/simulation/scribbles.py): strokes inside the eroded phases."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from src.simulation.scribbles import (
    UNLABELLED,
    draw_scribbles,
    labelled_fraction,
    regions_mask,
    to_napari_labels,
)
from tests.helpers import blob_labels


def test_scribbles_budget_agreement_and_interior():
    lab = blob_labels((160, 200), seed=3)
    s = draw_scribbles(lab, fraction=0.03, num_classes=3, erosion=2, seed=0)
    assert s.dtype == np.uint8 and s.shape == lab.shape
    frac = labelled_fraction(s)
    assert 0.005 < frac <= 0.03 + 1e-9
    drawn = s != UNLABELLED
    assert np.array_equal(s[drawn], lab[drawn])  # strokes never cross into another phase
    assert set(np.unique(s[drawn])) == {0, 1, 2}  # every phase scribbled
    # mostly away from the boundaries (the masks were eroded)
    boundary = ndimage.morphological_gradient(lab, size=3) > 0
    assert (drawn & boundary).sum() < 0.2 * drawn.sum()
    assert not np.array_equal(s, draw_scribbles(lab, 0.03, 3, erosion=2, seed=1))


def test_scribbles_within_regions_and_napari_convention():
    lab = blob_labels((128, 128), seed=4)
    mask = regions_mask(lab.shape, [{"y0": 0, "y1": 64, "x0": 64, "x1": 128}])
    s = draw_scribbles(lab, 0.1, 3, erosion=1, seed=0, within=mask)
    assert (s[~mask] == UNLABELLED).all() and (s[mask] != UNLABELLED).any()
    napari = to_napari_labels(s)
    assert (napari[s == UNLABELLED] == 0).all() and np.array_equal(napari[s != UNLABELLED], s[s != UNLABELLED] + 1)
    with pytest.raises(ValueError, match="2D"):
        draw_scribbles(np.zeros((4, 4, 4), np.uint8))
