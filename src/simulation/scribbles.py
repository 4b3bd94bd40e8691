"""Scribbles drawn programmatically from dense labels: a stand-in for a person with a brush.

A person scribbling a slice draws a few strokes well inside each phase, away from the
boundaries they are unsure of. :func:`draw_scribbles` does the same: each class mask is eroded,
its skeleton (the medial lines of the eroded regions) is cut into pieces, and whole pieces are
taken at random, thickened to a brush width inside the eroded mask, until the class's share of
the pixel budget is used. Classes get equal budgets (thin CBD is scribbled as much as NMC).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["UNLABELLED", "draw_scribbles", "labelled_fraction", "regions_mask", "to_napari_labels"]

#: the value of an unlabelled pixel in the scribbles returned here (``data.ignore_index``)
UNLABELLED = 255


def draw_scribbles(labels: np.ndarray, fraction: float = 0.03, num_classes: int | None = None,
                   erosion: int = 3, brush: int = 1, piece: int = 40, seed: int = 0,
                   within: np.ndarray | None = None) -> np.ndarray:
    """Strokes along the eroded class regions of a dense 2D label image.

    Args:
        labels: ``(y, x)`` dense labels ``0 .. K - 1``.
        fraction: the share of the image's pixels to label in total (≤ 0.05 in the study),
            split equally among the classes present.
        num_classes: K (default: ``labels.max() + 1``).
        erosion: radius (pixels) the class masks are eroded by before strokes are placed.
        brush: stroke half-width: a stroke is its skeleton pixels dilated by this radius.
        piece: skeletons are cut into pieces of about this many pixels, taken whole.
        seed: random seed.
        within: optional boolean mask; strokes are drawn only inside it (e.g. suggested regions).

    Returns:
        uint8 ``(y, x)``: the class where scribbled, :data:`UNLABELLED` (255) elsewhere.
    """
    from scipy import ndimage
    from skimage.morphology import disk, skeletonize

    lab = np.asarray(labels)
    if lab.ndim != 2:
        raise ValueError(f"draw_scribbles expects a 2D label image, got shape {lab.shape}")
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
    k = int(num_classes if num_classes is not None else lab.max() + 1)
    rng = np.random.default_rng(seed)
    area = lab.size if within is None else int(np.count_nonzero(within))
    present = [c for c in range(k) if np.any(lab[within] == c if within is not None else lab == c)]
    out = np.full(lab.shape, UNLABELLED, np.uint8)
    if not present:
        return out
    budget = fraction * area / len(present)
    brush_fp = disk(brush) if brush > 0 else np.ones((1, 1), bool)
    for c in present:
        mask = lab == c
        if within is not None:
            mask &= within
        eroded = ndimage.binary_erosion(mask, disk(erosion)) if erosion > 0 else mask
        if not eroded.any():  # a thin phase: erode less rather than not at all
            eroded = ndimage.binary_erosion(mask, disk(1)) if mask.sum() > 9 else mask
        skel = skeletonize(eroded)
        if not skel.any():
            continue
        strokes = ndimage.binary_dilation(skel, brush_fp) & (eroded | skel)
        # pieces: the stroke pixels in each cell of a coarse grid (`piece` pixels of skeleton
        # or so), taken whole in random order until the class's budget is spent
        cell = max(4, int(piece // 2))
        ys, xs = np.nonzero(strokes)
        keys = (ys // cell) * (lab.shape[1] // cell + 1) + xs // cell
        cells, inverse, counts = np.unique(keys, return_inverse=True, return_counts=True)
        order = rng.permutation(len(cells))
        total = np.cumsum(counts[order])
        n_take = max(1, int(np.searchsorted(total, budget, side="right")))
        chosen = np.zeros(len(cells), bool)
        chosen[order[:n_take]] = True
        drawn = np.zeros(lab.shape, bool)
        drawn[ys[chosen[inverse]], xs[chosen[inverse]]] = True
        out[drawn & (out == UNLABELLED)] = c
    return out


def to_napari_labels(scribbles: np.ndarray, ignore_index: int = UNLABELLED) -> np.ndarray:
    """Scribbles with ``ignore_index`` for unlabelled → napari/ilastik's 0 = unlabelled, 1..K."""
    s = np.asarray(scribbles)
    return np.where(s == ignore_index, 0, s.astype(np.int64) + 1).astype(np.uint8)


def labelled_fraction(scribbles: np.ndarray, ignore_index: int = UNLABELLED) -> float:
    """The share of pixels that carry a label."""
    s = np.asarray(scribbles)
    return float(np.count_nonzero(s != ignore_index)) / s.size


def regions_mask(shape: Sequence[int], regions: Sequence[dict]) -> np.ndarray:
    """Boolean ``(y, x)`` mask of the rectangles ``{"y0", "y1", "x0", "x1"}``."""
    mask = np.zeros(tuple(shape), bool)
    for r in regions:
        mask[int(r["y0"]):int(r["y1"]), int(r["x0"]):int(r["x1"])] = True
    return mask
