"""Classical segmentation baselines that the learned models are compared against."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_multiotsu


def multi_otsu_segment(
    image: np.ndarray,
    class_names: Sequence[str],
    dark_to_bright: Sequence[str] = ("pore", "CBD", "NMC"),
    sigma: float = 1.0,
) -> np.ndarray:
    """Multi-Otsu thresholding after a Gaussian blur (``sigma`` in pixels), 2D or 3D.

    Intensity classes, from darkest to brightest, are given the phases named in
    ``dark_to_bright`` (their label is their index in ``class_names``). Returns uint8 labels.
    """
    missing = [n for n in dark_to_bright if n not in class_names]
    if missing or len(dark_to_bright) != len(class_names):
        raise ValueError(f"dark_to_bright {list(dark_to_bright)} must order all of class_names {list(class_names)}")
    smooth = ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), sigma) if sigma > 0 else np.asarray(image)
    thresholds = threshold_multiotsu(smooth, classes=len(class_names))
    intensity_class = np.digitize(smooth, thresholds)
    lut = np.array([list(class_names).index(n) for n in dark_to_bright], np.uint8)
    return lut[intensity_class]
