"""Intensity normalisation and training augmentations (MONAI) for grey images and labels."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from monai import transforms as mt

#: most voxels used to estimate percentiles; larger images are sampled with a regular stride
PERCENTILE_SAMPLE = 2_000_000
#: the default normalisation: these grey-value percentiles map to 0 and 1
DEFAULT_NORMALIZE: dict[str, float] = {"lower": 0.5, "upper": 99.5}


def normalization(*choices: Mapping[str, float] | None) -> dict[str, float]:
    """The first normalisation given, else :data:`DEFAULT_NORMALIZE`.

    Args:
        choices: ``{lower, upper}`` percentiles or None, in order of precedence (e.g. the
            command's setting, then the checkpoint's).

    Returns:
        ``{"lower": ..., "upper": ...}`` percentiles.
    """
    for choice in choices:
        if choice:
            return dict(choice)
    return dict(DEFAULT_NORMALIZE)


def percentile_range(
    image: np.ndarray, lower: float = DEFAULT_NORMALIZE["lower"], upper: float = DEFAULT_NORMALIZE["upper"], max_samples: int = PERCENTILE_SAMPLE
) -> tuple[float, float]:
    """Grey values at the ``lower`` and ``upper`` percentiles of ``image`` (any shape).

    Large (possibly memory-mapped) images are read with a regular stride so at most about
    ``max_samples`` values are touched.
    """
    if not 0.0 <= lower < upper <= 100.0:
        raise ValueError(f"percentiles must satisfy 0 <= lower < upper <= 100, got {lower}, {upper}")
    flat = image.reshape(-1) if image.flags.c_contiguous else np.asarray(image).reshape(-1)
    step = max(1, flat.size // max_samples)
    sample = np.asarray(flat[::step], dtype=np.float64)
    lo, hi = np.percentile(sample, [lower, upper])
    if hi <= lo:  # nearly constant image: fall back to the full range
        lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        hi = lo + 1.0
    return float(lo), float(hi)


def normalize_percentile(
    image: np.ndarray, lower: float = DEFAULT_NORMALIZE["lower"], upper: float = DEFAULT_NORMALIZE["upper"], value_range: tuple[float, float] | None = None
) -> np.ndarray:
    """Map grey values so the ``lower``/``upper`` percentiles become 0/1 (float32, not clipped).

    ``value_range`` (lo, hi) skips the percentile estimate, e.g. to normalise a crop with the
    statistics of its whole image.
    """
    lo, hi = value_range if value_range is not None else percentile_range(image, lower, upper)
    out = np.asarray(image, dtype=np.float32) - np.float32(lo)
    out *= np.float32(1.0 / (hi - lo))
    return out


def training_augmentation(
    spatial_dims: int,
    prob: float = 0.5,
    flips: bool = True,
    rot90: bool = True,
    intensity_scale: float = 0.1,
    intensity_shift: float = 0.1,
    noise_std: float = 0.02,
    gamma: tuple[float, float] | None = None,
    blur_sigma: tuple[float, float] | None = None,
    bias_field: float = 0.0,
    invert_prob: float = 0.0,
) -> mt.Compose:
    """Build the training augmentation of patches.

    Random flips, 90° rotations, intensity scale/shift and Gaussian noise; optionally gamma
    (``gamma``: range, MONAI ``RandAdjustContrast``), Gaussian blur (``blur_sigma``: range of
    sigma in pixels), a smooth multiplicative bias field (``bias_field``: its coefficient range)
    and grey-value inversion with probability ``invert_prob``: the appearance changes the
    domain-randomised simulator makes per volume, made per patch too.

    Applied to a dict {"image": (1, *spatial), "label": (1, *spatial)}; geometric transforms act
    on both keys, intensity transforms on the image only.
    """
    keys = ["image", "label"]
    steps: list = []
    if flips:
        steps += [mt.RandFlipd(keys, prob=prob, spatial_axis=axis) for axis in range(spatial_dims)]
    if rot90:
        planes = [(0, 1)] if spatial_dims == 2 else [(0, 1), (0, 2), (1, 2)]
        steps += [mt.RandRotate90d(keys, prob=prob, max_k=3, spatial_axes=p) for p in planes]
    if intensity_scale > 0:
        steps.append(mt.RandScaleIntensityd("image", factors=intensity_scale, prob=prob))
    if intensity_shift > 0:
        steps.append(mt.RandShiftIntensityd("image", offsets=intensity_shift, prob=prob))
    if noise_std > 0:
        steps.append(mt.RandGaussianNoised("image", prob=prob, std=noise_std))
    if bias_field > 0:
        steps.append(mt.RandBiasFieldd("image", coeff_range=(0.0, float(bias_field)), prob=prob))
    if gamma is not None:
        steps.append(mt.RandAdjustContrastd("image", gamma=tuple(float(g) for g in gamma), prob=prob))
    if blur_sigma is not None:
        lo, hi = (float(b) for b in blur_sigma)
        steps.append(mt.RandGaussianSmoothd("image", sigma_x=(lo, hi), sigma_y=(lo, hi), sigma_z=(lo, hi),
                                            prob=prob))
    if invert_prob > 0:
        steps.append(mt.RandLambdad("image", lambda x: 1.0 - x, prob=float(invert_prob)))
    return mt.Compose(steps)
