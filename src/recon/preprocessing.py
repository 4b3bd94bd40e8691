"""tomopy-style preprocessing of projection stacks ``(angles, rows, cols)`` (numpy in, numpy out).

* :func:`normalize` -- flat/dark correction with mean flats and darks and safe division;
* :func:`minus_log` -- ``-log`` with clipping of non-positive / non-finite transmissions;
* :func:`remove_outliers` -- zinger removal: values that differ from the 3x3 median of their
  projection by more than a fraction of it are replaced by that median (tomopy's
  ``remove_outlier`` with a relative threshold);
* :func:`remove_stripe_sorting` -- Vo et al.'s sorting-based stripe (ring) removal
  (Opt. Express 26, 28396 (2018), algorithm 3): sort every detector column along the angles,
  median-filter across columns, then subtract the per-column offsets (or undo the sort);
* :func:`remove_stripe_fw` -- Münch et al.'s Fourier--wavelet stripe removal (Opt. Express 17,
  8567 (2009)), tomopy's algorithm and defaults (equal to tomopy's output to float32 rounding);
* :func:`retrieve_phase` -- Paganin single-distance phase retrieval with tomopy's parameters
  (pixel size and distance in cm, energy in keV, ``alpha = beta/delta``).

Rotation-centre finding lives in :mod:`src.recon.centre`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import ndimage

__all__ = ["minus_log", "normalize", "remove_outliers", "remove_stripe_fw", "remove_stripe_sorting",
           "retrieve_phase"]

# h c in keV cm: wavelength[cm] = _HC_KEV_CM / energy[keV]
_HC_KEV_CM = 1.239841984e-7


def normalize(
    tomo: np.ndarray, flat: np.ndarray, dark: np.ndarray, cutoff: float | None = None,
    eps: float = 1e-6,
) -> np.ndarray:
    """Flat/dark normalisation ``(tomo - dark) / (flat - dark)`` (tomopy's ``normalize``).

    Args:
        tomo: raw counts ``(angles, rows, cols)``.
        flat: flat fields ``(n_flat, rows, cols)`` (or one ``(rows, cols)``), averaged.
        dark: dark fields, same layout, averaged.
        cutoff: clip the result at this maximum (tomopy's ``cutoff``).
        eps: replaces non-positive ``flat - dark`` (dead pixels), with a warning.

    Returns:
        float32 transmission ``(angles, rows, cols)``.
    """
    tomo = np.asarray(tomo, dtype=np.float32)
    flat_m = np.asarray(flat, dtype=np.float32)
    dark_m = np.asarray(dark, dtype=np.float32)
    flat_m = flat_m.mean(0) if flat_m.ndim == 3 else flat_m
    dark_m = dark_m.mean(0) if dark_m.ndim == 3 else dark_m
    if flat_m.shape != tomo.shape[1:] or dark_m.shape != tomo.shape[1:]:
        raise ValueError(f"flat {flat_m.shape} / dark {dark_m.shape} must match a projection "
                         f"{tomo.shape[1:]} (tomo is (angles, rows, cols))")
    denom = flat_m - dark_m
    bad = ~(denom > 0)
    if bad.all():
        raise ValueError("flat - dark is non-positive everywhere: flats and darks swapped?")
    if bad.any():
        warnings.warn(f"{int(bad.sum())} pixels have flat <= dark; their denominator is set to "
                      f"{eps}", RuntimeWarning, stacklevel=2)
        denom = np.where(bad, np.float32(eps), denom)
    out = (tomo - dark_m) / denom
    if cutoff is not None:
        np.minimum(out, np.float32(cutoff), out=out)
    return out.astype(np.float32, copy=False)


def minus_log(tomo: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Line integrals ``-log(max(tomo, eps))``; NaN becomes ``eps`` (float32, same shape)."""
    t = np.nan_to_num(np.asarray(tomo, dtype=np.float32), nan=eps, posinf=np.inf, neginf=eps)
    out = -np.log(np.clip(t, eps, None))
    return np.nan_to_num(out, posinf=-math.log(eps), neginf=0.0).astype(np.float32, copy=False)


def remove_outliers(tomo: np.ndarray, threshold: float = 0.1, size: int = 3) -> np.ndarray:
    """Replace zingers: pixels with ``|x - med| > threshold * |med|`` by ``med``.

    ``med`` is the ``size x size`` median within each projection ``(angles, rows, cols)`` (float32,
    same shape).
    """
    tomo = np.asarray(tomo, dtype=np.float32)
    single = tomo.ndim == 2
    t = tomo[:, None] if single else tomo
    med = ndimage.median_filter(t, size=(1, size, size), mode="reflect")
    out = np.where(np.abs(t - med) > threshold * np.abs(med), med, t).astype(np.float32)
    return out[:, 0] if single else out


def remove_stripe_sorting(tomo: np.ndarray, size: int = 21, offsets_only: bool = True) -> np.ndarray:
    """Vo's sorting-based stripe removal (the stripes that become ring artefacts).

    Each sinogram ``tomo[:, r, :]`` has its columns sorted along the angle axis; in the sorted
    sinogram a stripe is a column that stands out from its neighbours at every angle, which a
    median across ``size`` columns removes. With ``offsets_only`` (default) only the per-column
    offset (median over angles of sorted minus filtered) is subtracted, which keeps the object's
    edges intact; ``False`` is Vo's original (replace by the filtered values and un-sort).

    Args:
        tomo: ``(angles, rows, cols)`` line integrals (or one sinogram ``(angles, cols)``).
        size: median window across detector columns (~1-2% of the width or more; wider than the
            widest stripe).
        offsets_only: subtract per-column offsets instead of replacing values.

    Returns:
        float32 array of the input's shape.
    """
    tomo = np.asarray(tomo, dtype=np.float32)
    single = tomo.ndim == 2
    t = tomo[:, None] if single else tomo
    order = np.argsort(t, axis=0, kind="stable")  # (angles, rows, cols)
    sorted_t = np.take_along_axis(t, order, axis=0)
    smooth = ndimage.median_filter(sorted_t, size=(1, 1, max(1, int(size))), mode="reflect")
    if offsets_only:
        out = t - np.median(sorted_t - smooth, axis=0, keepdims=True)
    else:
        out = np.empty_like(t)
        np.put_along_axis(out, order, smooth, axis=0)
    return out[:, 0] if single else out


def remove_stripe_fw(
    tomo: np.ndarray, level: int | None = None, wname: str = "db5", sigma: float = 2.0,
    pad: bool = True,
) -> np.ndarray:
    """Fourier--wavelet stripe removal on each sinogram ``tomo[:, r, :]``.

    As tomopy's ``remove_stripe_fw``: ``level`` wavelet decompositions (default
    ``ceil(log2(max shape))``), the vertical detail bands damped along the angle axis in Fourier
    space by ``1 - exp(-k^2 / (2 sigma^2))``, then the inverse transform. ``pad`` adds
    ``angles / 8`` zero rows (split on both ends). Needs PyWavelets. float32, the input's shape.

    The damping also removes angle-constant parts of the object's detail bands: on small
    sinograms (tens of columns) that changes the reconstruction visibly, so the sorting-based
    :func:`remove_stripe_sorting` stays the default of ``reconstruct.py``.
    """
    try:
        import pywt
    except ImportError as err:
        raise ImportError("remove_stripe_fw needs PyWavelets: pip install PyWavelets") from err
    tomo = np.array(tomo, dtype=np.float32)
    single = tomo.ndim == 2
    t = tomo[:, None] if single else tomo
    dx, dy, dz = t.shape
    if level is None:
        level = int(np.ceil(np.log2(max(t.shape))))
    nx = dx + dx // 8 if pad else dx
    xshift = (nx - dx) // 2
    with warnings.catch_warnings():  # pywt warns when the level exceeds its useful maximum
        warnings.simplefilter("ignore", UserWarning)
        for m in range(dy):
            sli = np.zeros((nx, dz), dtype=np.float32)
            sli[xshift:dx + xshift] = t[:, m, :]
            details = []
            for _ in range(level):
                sli, bands = pywt.dwt2(sli, wname)
                details.append(list(bands))
            for bands in details:
                spectrum = np.fft.fftshift(np.fft.fft(bands[1], axis=0), axes=0)
                my = spectrum.shape[0]
                y_hat = (np.arange(-my, my, 2, dtype=np.float32) + 1) / 2
                damp = -np.expm1(-np.square(y_hat) / (2 * sigma**2))
                spectrum *= damp[:, None]
                bands[1] = np.real(np.fft.ifft(np.fft.ifftshift(spectrum, axes=0), axis=0))
            for bands in details[::-1]:
                sli = sli[: bands[0].shape[0], : bands[0].shape[1]]
                sli = pywt.idwt2((sli, tuple(bands)), wname)
            t[:, m, :] = sli[xshift:dx + xshift, :dz]
    return t[:, 0] if single else t


def _pad_width(n: int, pixel_size: float, wavelength: float, dist: float) -> int:
    """Per-side padding to a power of two that holds the Fresnel blur (tomopy's rule)."""
    pad_pix = math.ceil(math.pi * wavelength * dist / pixel_size**2)
    return int((2 ** math.ceil(math.log2(n + pad_pix)) - n) // 2)


def retrieve_phase(
    tomo: np.ndarray,
    pixel_size: float = 1e-4,
    dist: float = 50.0,
    energy: float = 20.0,
    alpha: float = 1e-3,
    pad: bool = True,
) -> np.ndarray:
    """Paganin single-distance phase retrieval (filter per projection, tomopy's parameters).

    Applies ``F^-1[ F[I] / (1 + lambda dist |k|^2 / (4 pi alpha)) ]`` (unit DC gain) to each
    projection, ``k`` in rad/cm, ``lambda = hc / energy``. Like tomopy, no logarithm is taken:
    apply :func:`minus_log` afterwards for a thickness-like map.

    Args:
        tomo: flat-corrected projections ``(angles, rows, cols)``.
        pixel_size: detector pixel size, cm.
        dist: propagation distance, cm.
        energy: photon energy, keV.
        alpha: regularisation, ``beta / delta`` of the material.
        pad: pad with edge values to a power of two (avoids wrap-around).

    Returns:
        float32 ``(angles, rows, cols)``.
    """
    tomo = np.asarray(tomo, dtype=np.float32)
    if tomo.ndim == 2:
        tomo = tomo[None]
    _, rows, cols = tomo.shape
    wavelength = _HC_KEV_CM / energy
    py = _pad_width(rows, pixel_size, wavelength, dist) if pad else 0
    px = _pad_width(cols, pixel_size, wavelength, dist) if pad else 0
    ny, nx = rows + 2 * py, cols + 2 * px
    ky = 2 * np.pi * np.fft.fftfreq(ny, d=pixel_size)
    kx = 2 * np.pi * np.fft.rfftfreq(nx, d=pixel_size)
    k2 = ky[:, None] ** 2 + kx[None, :] ** 2
    filt = 1.0 / (1.0 + wavelength * dist * k2 / (4 * np.pi * alpha))
    out = np.empty_like(tomo)
    for i, proj in enumerate(tomo):
        padded = np.pad(proj, ((py, py), (px, px)), mode="edge") if pad else proj
        res = np.fft.irfft2(np.fft.rfft2(padded) * filt, s=(ny, nx))
        out[i] = res[py:py + rows, px:px + cols]
    return out
