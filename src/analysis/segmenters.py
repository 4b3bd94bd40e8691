"""Classical segmenters (multi-Otsu, k-means, random forest): the baselines the learned models are compared against.

Each baseline is also a *segmenter* with one interface, so ``evaluate.py method=...`` runs any
of them like a checkpoint: ``fit(images, labels)`` (a no-op for the unsupervised ones) and
``predict(image) -> uint8 labels`` for a normalised 2D image or 3D (z, y, x) volume.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from skimage.filters import threshold_multiotsu


def check_intensity_order(class_names: Sequence[str], dark_to_bright: Sequence[str]) -> None:
    """ValueError unless ``dark_to_bright`` names every phase of ``class_names`` once."""
    missing = [n for n in dark_to_bright if n not in class_names]
    if missing or len(dark_to_bright) != len(class_names):
        raise ValueError(f"dark_to_bright {list(dark_to_bright)} must order all of class_names {list(class_names)}")


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
    check_intensity_order(class_names, dark_to_bright)
    smooth = ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), sigma) if sigma > 0 else np.asarray(image)
    thresholds = threshold_multiotsu(smooth, classes=len(class_names))
    intensity_class = np.digitize(smooth, thresholds)
    lut = np.array([list(class_names).index(n) for n in dark_to_bright], np.uint8)
    return lut[intensity_class]


def kmeans_segment(
    image: np.ndarray,
    class_names: Sequence[str],
    dark_to_bright: Sequence[str] = ("pore", "CBD", "NMC"),
    sigma: float = 1.0,
    seed: int = 0,
    max_samples: int = 200_000,
) -> np.ndarray:
    """k-means (k = number of phases) on blurred grey values, clusters named by brightness.

    Fitted on at most ``max_samples`` voxels (strided), then every voxel goes to the nearest
    centre. Returns uint8 labels, 2D or 3D.
    """
    from sklearn.cluster import KMeans

    check_intensity_order(class_names, dark_to_bright)
    smooth = ndimage.gaussian_filter(np.asarray(image, dtype=np.float32), sigma) if sigma > 0 else np.asarray(image, np.float32)
    flat = smooth.reshape(-1, 1)
    sample = flat[:: max(1, flat.shape[0] // max_samples)]
    km = KMeans(n_clusters=len(class_names), n_init=4, random_state=seed).fit(sample)
    order = np.argsort(km.cluster_centers_[:, 0])  # dark → bright
    lut = np.empty(len(class_names), np.uint8)
    lut[order] = [list(class_names).index(n) for n in dark_to_bright]
    return lut[km.predict(flat)].reshape(smooth.shape)


def filter_features(image: np.ndarray, sigmas: Sequence[float] = (1.0, 2.0, 4.0, 8.0)) -> np.ndarray:
    """Weka-like per-pixel features of a normalised 2D image → (H, W, F) float32.

    Per scale σ: Gaussian, difference of Gaussians (σ, 2σ), Sobel gradient magnitude of the
    Gaussian, the two Hessian eigenvalues, and the local variance in a Gaussian window.
    """
    from skimage.feature import hessian_matrix, hessian_matrix_eigvals
    from skimage.filters import sobel

    img = np.asarray(image, dtype=np.float32)
    if img.ndim != 2:
        raise ValueError(f"filter_features expects a 2D image, got shape {img.shape}")
    feats = [img]
    for s in sigmas:
        g = ndimage.gaussian_filter(img, s)
        feats += [g, g - ndimage.gaussian_filter(img, 2 * s), sobel(g)]
        feats += list(hessian_matrix_eigvals(hessian_matrix(img, sigma=s, order="rc", use_gaussian_derivatives=False)))
        feats.append(ndimage.gaussian_filter(img * img, s) - g * g)
    return np.stack(feats, axis=-1).astype(np.float32)


class RandomForestSegmenter:
    """Random forest on :func:`filter_features`, trained on labelled 2D slices (scikit-learn).

    Args:
        n_estimators, max_depth: forest size.
        samples_per_class: training pixels drawn per phase and image (balanced).
        sigmas: feature scales in pixels.
        seed: sampling and forest seed.
        class_names: accepted for a uniform segmenter interface (labels are indices).
    """

    needs_labels = True

    def __init__(self, n_estimators: int = 100, max_depth: int | None = 20, samples_per_class: int = 4000,
                 sigmas: Sequence[float] = (1.0, 2.0, 4.0, 8.0), seed: int = 0,
                 class_names: Sequence[str] | None = None) -> None:
        from sklearn.ensemble import RandomForestClassifier

        self.samples_per_class = samples_per_class
        self.ignore_index = 255  # the label of unlabelled pixels (data.ignore_index): not fitted
        self.sigmas = tuple(sigmas)
        self.seed = seed
        self.forest = RandomForestClassifier(n_estimators=n_estimators, max_depth=max_depth, n_jobs=-1, random_state=seed)

    def fit(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> RandomForestSegmenter:
        """Train on pairs of normalised 2D images and their labels (same shapes)."""
        rng = np.random.default_rng(self.seed)
        xs, ys = [], []
        for img, lab in zip(images, labels, strict=True):
            if img.shape != lab.shape:
                raise ValueError(f"image shape {img.shape} and label shape {lab.shape} differ")
            feats = filter_features(img, self.sigmas).reshape(-1, len(self.sigmas) * 6 + 1)
            flat = np.asarray(lab).reshape(-1)
            for c in np.unique(flat):
                if c == self.ignore_index:  # unlabelled pixels of sparse labels (scribbles)
                    continue
                idx = np.flatnonzero(flat == c)
                idx = rng.choice(idx, min(self.samples_per_class, idx.size), replace=False)
                xs.append(feats[idx])
                ys.append(flat[idx])
        self.forest.fit(np.concatenate(xs), np.concatenate(ys))
        return self

    def predict(self, image: np.ndarray) -> np.ndarray:
        """uint8 labels of a normalised 2D image, or of each z slice of a 3D volume."""
        if image.ndim == 3:
            return np.stack([self.predict(s) for s in image])
        feats = filter_features(image, self.sigmas)
        return self.forest.predict(feats.reshape(-1, feats.shape[-1])).reshape(image.shape).astype(np.uint8)

    @property
    def classes(self) -> np.ndarray:
        """Label values of the :meth:`predict_proba` columns (those seen in training)."""
        return self.forest.classes_

    def predict_proba(self, image: np.ndarray) -> np.ndarray:
        """Class probabilities (H, W, K) of a normalised 2D image; column k is label ``classes[k]``."""
        if image.ndim != 2:
            raise ValueError(f"predict_proba expects a 2D image, got shape {image.shape}")
        feats = filter_features(image, self.sigmas)
        return self.forest.predict_proba(feats.reshape(-1, feats.shape[-1])).reshape(*image.shape, -1)


class MultiOtsuSegmenter:
    """:func:`multi_otsu_segment` as a segmenter (unsupervised: ``fit`` does nothing)."""

    needs_labels = False

    def __init__(self, class_names: Sequence[str], dark_to_bright: Sequence[str] = ("pore", "CBD", "NMC"),
                 sigma: float = 1.0) -> None:
        self.class_names, self.dark_to_bright, self.sigma = list(class_names), list(dark_to_bright), sigma
        check_intensity_order(self.class_names, self.dark_to_bright)

    def fit(self, images: Sequence[np.ndarray] = (), labels: Sequence[np.ndarray] = ()) -> MultiOtsuSegmenter:
        """Nothing to fit (unsupervised); returns ``self``."""
        return self

    def predict(self, image: np.ndarray) -> np.ndarray:
        """uint8 labels of a normalised image by :func:`multi_otsu_segment`."""
        return multi_otsu_segment(image, self.class_names, self.dark_to_bright, self.sigma)


class KMeansSegmenter:
    """:func:`kmeans_segment` as a segmenter (unsupervised: ``fit`` does nothing)."""

    needs_labels = False

    def __init__(self, class_names: Sequence[str], dark_to_bright: Sequence[str] = ("pore", "CBD", "NMC"),
                 sigma: float = 1.0, seed: int = 0) -> None:
        self.class_names, self.dark_to_bright, self.sigma, self.seed = list(class_names), list(dark_to_bright), sigma, seed
        check_intensity_order(self.class_names, self.dark_to_bright)

    def fit(self, images: Sequence[np.ndarray] = (), labels: Sequence[np.ndarray] = ()) -> KMeansSegmenter:
        """Nothing to fit (unsupervised); returns ``self``."""
        return self

    def predict(self, image: np.ndarray) -> np.ndarray:
        """uint8 labels of a normalised image by :func:`kmeans_segment`."""
        return kmeans_segment(image, self.class_names, self.dark_to_bright, self.sigma, self.seed)
