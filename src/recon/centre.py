"""Rotation-centre finding for parallel-beam scans over [0, pi).

Centres are detector columns in the project's convention (the one of ``recon(center=...)``,
default ``cols / 2`` = the middle of the detector): a column index ``j`` has its pixel centre at
``j + 0.5``. All three methods are checked on projections simulated with a known centre.

* :func:`find_center_vo` -- Vo et al. (Opt. Express 22, 19078 (2014)): a sinogram and its
  mirrored copy form a 360-degree sinogram that is consistent only for the right centre;
  inconsistency puts Fourier energy outside the double wedge ``|k_angle| <= 2 pi R |f_det|``.
* :func:`find_center_pc` -- phase correlation of the 0-degree projection with the mirrored
  180-degree projection (subpixel by upsampled cross-correlation).
* :func:`find_center` -- minimum entropy of the FBP image over candidate centres (tomopy's
  ``find_center``), all candidates reconstructed as one batch.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage.registration import phase_cross_correlation

from src.recon.fbp import fbp
from src.recon.operators import ParallelBeamProjector

__all__ = ["find_center", "find_center_pc", "find_center_vo"]


def _sinogram(tomo: np.ndarray, ind: int | None) -> np.ndarray:
    tomo = np.asarray(tomo, dtype=np.float64)
    if tomo.ndim == 2:
        return tomo
    if tomo.ndim != 3:
        raise ValueError(f"tomo must be (angles, rows, cols) or (angles, cols), got {tomo.shape}")
    return tomo[:, tomo.shape[1] // 2 if ind is None else ind]


def _vo_mask(n_rows: int, n_cols: int, radius: float, drop: int) -> np.ndarray:
    """1 outside the double wedge ``|k| <= 2 pi radius |f|`` of a consistent 360 sinogram."""
    k = np.fft.fftfreq(n_rows) * n_rows  # angular harmonic (cycles per 2 pi)
    f = np.fft.fftfreq(n_cols)  # detector frequency, cycles per pixel
    mask = (np.abs(k)[:, None] >= 2 * np.pi * radius * np.abs(f)[None, :]).astype(np.float64)
    drop = min(drop, int(np.ceil(0.05 * n_rows)))
    mask[np.abs(k) <= drop] = 0.0
    mask[:, np.abs(f) <= 1.0 / n_cols] = 0.0
    return mask


def _vo_metric(sino: np.ndarray, flipped: np.ndarray, shift: float, mask: np.ndarray) -> float:
    moved = ndimage.shift(flipped, (0, shift), order=1, mode="nearest")
    full = np.vstack((sino, moved))
    return float(np.mean(np.abs(np.fft.fft2(full)) * mask))


def find_center_vo(
    tomo: np.ndarray,
    ind: int | None = None,
    smin: float = -50.0,
    smax: float = 50.0,
    srad: float = 6.0,
    step: float = 0.25,
    ratio: float = 0.5,
    drop: int = 20,
) -> float:
    """Vo's Fourier-space centre search on one sinogram.

    Args:
        tomo: ``(angles, rows, cols)`` projections over [0, pi) or one sinogram
            ``(angles, cols)``.
        ind: the row of ``tomo`` to search on (default the middle one).
        smin: start of the coarse search range, pixels from the detector middle (step 0.5).
        smax: end of the coarse search range, pixels from the detector middle.
        srad: fine search radius around the coarse minimum, pixels.
        step: fine search step, pixels.
        ratio: object diameter / detector width (sets the wedge).
        drop: angular-frequency rows around zero ignored by the metric.

    Returns:
        Rotation centre, detector columns (our convention, see the module docstring).
    """
    sino = _sinogram(tomo, ind)
    sino = sino - sino.mean()
    n_angles, cols = sino.shape
    flipped = sino[:, ::-1]
    mask = _vo_mask(2 * n_angles, cols, 0.5 * ratio * cols, drop)
    # centre c <-> mirrored sinogram shifted by s = 2 c - cols (pixel-centre coordinates)
    lo, hi = max(smin, -cols / 2 + 1), min(smax, cols / 2 - 1)
    coarse = np.arange(cols / 2 + lo, cols / 2 + hi + 1e-9, 0.5)
    metric = [_vo_metric(sino, flipped, 2 * c - cols, mask) for c in coarse]
    best = float(coarse[int(np.argmin(metric))])
    fine = np.arange(best - srad, best + srad + 1e-9, step)
    metric = [_vo_metric(sino, flipped, 2 * c - cols, mask) for c in fine]
    return float(fine[int(np.argmin(metric))])


def find_center_pc(
    proj0: np.ndarray, proj180: np.ndarray, tol: float = 0.05, rotc_guess: float | None = None
) -> float:
    """Centre from the phase correlation of ``proj0`` and the mirrored ``proj180`` (2D, (rows, cols)).

    ``tol`` is the precision of the centre in pixels (the shift is found to ``2 tol``);
    ``rotc_guess`` pre-shifts ``proj180`` by ``2 (rotc_guess - cols / 2)`` to help a far-off axis.
    Returns the centre in detector columns (our convention).
    """
    p0 = np.asarray(proj0, dtype=np.float64)
    p180 = np.asarray(proj180, dtype=np.float64)
    if p0.ndim != 2 or p0.shape != p180.shape:
        raise ValueError(f"proj0 {p0.shape} and proj180 {p180.shape} must be equal 2D images")
    cols = p0.shape[1]
    mirrored = p180[:, ::-1]
    pre = 0.0
    if rotc_guess is not None:
        pre = 2.0 * (rotc_guess - cols / 2.0)
        mirrored = ndimage.shift(mirrored, (0, pre), order=1, mode="nearest")
    upsample = max(1, int(np.ceil(1.0 / (2.0 * tol))))
    shift = phase_cross_correlation(p0, mirrored, upsample_factor=upsample)[0]
    # mirrored[x] = proj0[x + cols - 2c] (pixel centres at j + 0.5): registration dx = 2c - cols
    return float((cols + shift[1] + pre) / 2.0)


def _entropy(img: np.ndarray, lo: float, hi: float, bins: int = 64) -> float:
    hist, _ = np.histogram(img, bins=bins, range=(lo, hi))
    p = hist[hist > 0] / max(hist.sum(), 1)
    return float(-(p * np.log2(p)).sum())


def find_center(
    tomo: np.ndarray,
    theta: np.ndarray,
    ind: int | None = None,
    init: float | None = None,
    search: float = 20.0,
    tol: float = 0.05,
    ratio: float = 1.0,
) -> float:
    """Centre minimising the histogram entropy of the FBP reconstruction (tomopy's method).

    Candidates ``init +- search`` (default ``init = cols / 2``) at 0.5 px, then ``tol`` around the
    best; the sinogram is shifted (Fourier shift) instead of the axis so that all candidates
    share one operator and are reconstructed as one batch. ``ratio`` is the radius of the
    circular mask over which the entropy is taken, relative to ``cols / 2``.
    """
    sino = _sinogram(tomo, ind)
    n_angles, cols = sino.shape
    init = cols / 2.0 if init is None else float(init)
    op = ParallelBeamProjector((cols, cols), theta, n_det=cols)
    yy, xx = np.mgrid[:cols, :cols] + 0.5 - cols / 2.0
    inside = xx**2 + yy**2 <= (ratio * cols / 2.0) ** 2
    freq = np.fft.fftfreq(cols)
    spectrum = np.fft.fft(sino, axis=1)

    def recons(centres: np.ndarray) -> np.ndarray:
        phase = np.exp(-2j * np.pi * freq[None, :] * (cols / 2.0 - centres[:, None]))
        moved = np.fft.ifft(spectrum[None] * phase[:, None, :], axis=2).real
        with torch.no_grad():
            return fbp(torch.from_numpy(moved), op).numpy()

    base = recons(np.array([init]))[0][inside]
    lo, hi = float(base.min()), float(base.max())

    def best_of(centres: np.ndarray) -> float:
        ent = [_entropy(r[inside], lo, hi) for r in recons(centres)]
        return float(centres[int(np.argmin(ent))])

    best = best_of(np.arange(init - search, init + search + 1e-9, 0.5))
    return best_of(np.arange(best - 0.5, best + 0.5 + 1e-9, tol))
