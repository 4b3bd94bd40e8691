"""Gridrec-class Fourier reconstruction.

The filtered inverse of the Fourier slice theorem, evaluated with a non-uniform FFT (FINUFFT).

Same geometry, centre convention, filters and scale as :func:`src.recon.fbp.fbp` (see
:mod:`src.recon.operators`): a ray at angle ``theta`` collects ``t = x cos(theta) - y sin(theta)``
and detector bin ``d`` has its centre at ``t = d + 0.5 - center``. Each projection row is
zero-padded to ``n`` (the next power of two >= ``2 n_det``), Fourier transformed and multiplied by
the filter response of :func:`~src.recon.filters.filter_response`. FBP then samples the filtered row
at every pixel through the operator's adjoint (interpolating footprint weights); here the band-limited filtered row is summed exactly:

``f(x, y) = pi / A * Re sum_a sum_k w_k c_{a,k} exp(2 pi i (k / n) (x cos(theta_a) - y sin(theta_a)))``

with ``c_{a,k} = P_{a,k} H_k exp(2 pi i k (center - 1/2) / n) / n`` (``P`` the row's DFT, ``H``
the filter, ``k = 0 .. n/2``, ``w_k = 2`` except 1 at ``k = 0`` and ``n/2``). That sum over the
polar points ``(k/n)(cos, -sin)`` onto the pixel grid is one type-1 NUFFT of all slices at once
(the centre of each slice only changes its coefficients, so one plan serves a whole block, also
with a tilted axis). The result is FBP without the interpolation blur of the backprojection,
to the NUFFT tolerance ``eps``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import scipy.fft

from src.recon.filters import filter_response, padded_size

__all__ = ["finufft_available", "gridrec"]

#: coefficient bytes of one NUFFT call (its slices share one plan of the polar points)
_GROUP_BYTES = 256 * 2**20


def finufft_available() -> bool:
    """Whether the ``finufft`` package (the ``recon`` extra) imports."""
    try:
        import finufft  # noqa: F401
    except ImportError:
        return False
    return True


def _threads() -> int:
    try:
        import torch

        return max(1, int(torch.get_num_threads()))
    except ImportError:  # pragma: no cover - torch is a core dependency
        return max(1, os.cpu_count() or 1)


def gridrec(
    sino: np.ndarray,
    theta: Sequence[float] | np.ndarray,
    center: float | Sequence[float] | np.ndarray | None = None,
    filter_name: str = "ramp",
    pad: bool = True,
    eps: float = 1e-4,
    image_shape: tuple[int, int] | None = None,
    n_threads: int | None = None,
) -> np.ndarray:
    """Fourier (gridrec-class) filtered reconstruction ``(B, A, n_det) -> (B, H, W)``.

    Args:
        sino: sinograms ``(B, A, n_det)`` (or one ``(A, n_det)``), line integrals, angles
            covering ``[0, pi)``.
        theta: ``A`` angles, radians.
        center: detector column of the rotation axis (default ``n_det / 2``), one value or one
            per sinogram.
        filter_name: one of :data:`src.recon.filters.FILTERS`.
        pad: zero-pad the rows to the next power of two >= ``2 n_det`` before filtering.
        eps: NUFFT relative tolerance (float32 arithmetic for ``eps >= 1e-6``, else float64).
        image_shape: ``(H, W)`` of the slices (default ``(n_det, n_det)``).
        n_threads: FINUFFT threads (default: torch's thread count).

    Returns:
        float32 ``(B, H, W)`` (``(1, H, W)`` for one sinogram), attenuation per pixel, as
        :func:`src.recon.fbp.fbp`.

    Raises:
        ImportError: without ``finufft`` (``pip install finufft``, in the ``recon`` extra).
        ValueError: on shapes that do not match ``theta``/``center``.
    """
    try:
        import finufft
    except ImportError as exc:
        raise ImportError("algorithm=gridrec needs finufft: pip install finufft (or the recon "
                          "extra, pip install -e '.[recon]')") from exc
    sino = np.asarray(sino)
    if sino.ndim == 2:
        sino = sino[None]
    if sino.ndim != 3:
        raise ValueError(f"gridrec: sinograms must be (B, A, n_det), got shape {sino.shape}")
    b, n_angles, n_det = sino.shape
    th = np.asarray(theta, dtype=np.float64).ravel()
    if th.size != n_angles:
        raise ValueError(f"gridrec: theta has {th.size} angles, the sinograms {n_angles}")
    centers = np.broadcast_to(np.asarray(n_det / 2.0 if center is None else center,
                                         dtype=np.float64), (b,))
    h, w = image_shape or (n_det, n_det)
    single = eps >= 1e-6
    real_t, cplx_t = (np.float32, np.complex64) if single else (np.float64, np.complex128)

    n = padded_size(n_det, pad)
    k = np.arange(n // 2 + 1, dtype=np.float64)
    response = filter_response(n, filter_name).numpy()  # (n//2 + 1,), float64
    weight = np.full(k.size, 2.0)
    weight[0] = 1.0
    if n % 2 == 0:
        weight[-1] = 1.0
    # pixel centres x = j + 0.5 - W/2 are FINUFFT's modes m = -(W//2) .. plus a half-pixel
    # shift for even sizes: exp(2 pi i w x) = exp(2 pi i w m) exp(2 pi i w off)
    off_x = 0.5 - w / 2 + w // 2
    off_y = 0.5 - h / 2 + h // 2
    freq = k / n  # cycles per pixel, 0 .. 1/2
    wx = np.cos(th)[:, None] * freq[None]  # (A, K) along x
    wy = -np.sin(th)[:, None] * freq[None]  # along y (rows)
    base = (response * weight / n)[None] * np.exp(2j * np.pi * (wx * off_x + wy * off_y))  # (A, K)

    px = (2 * np.pi * wx).ravel().astype(real_t)  # FINUFFT's points: radians per mode step
    py = (2 * np.pi * wy).ravel().astype(real_t)
    base = base.astype(cplx_t)
    # slices per NUFFT call: the coefficients of a group stay under _GROUP_BYTES
    group = int(max(1, min(b, _GROUP_BYTES // max(1, base.nbytes))))
    # type 1: f[mx, my] = sum_j c_j exp(+i (mx px_j + my py_j)), all slices of a group at once
    plan = finufft.Plan(1, (w, h), n_trans=group, eps=eps, isign=1, dtype=cplx_t,
                        nthreads=n_threads or _threads(), modeord=0)
    plan.setpts(px, py)
    out = np.empty((b, h, w), dtype=np.float32)
    coeffs = np.zeros((group, *base.shape), dtype=cplx_t)
    for z in range(0, b, group):
        stop = min(z + group, b)
        spectrum = scipy.fft.rfft(sino[z:stop].astype(real_t, copy=False), n=n, axis=-1,
                                  workers=n_threads or _threads())  # (g, A, K)
        shift = np.exp(2j * np.pi * k[None, :] * (centers[z:stop, None] - 0.5) / n).astype(cplx_t)
        coeffs[:stop - z] = spectrum * base[None] * shift[:, None, :]
        coeffs[stop - z:] = 0
        res = plan.execute(coeffs.reshape(group, -1)).reshape(group, w, h)  # (g, W, H)
        out[z:stop] = res[:stop - z].real.transpose(0, 2, 1) * (np.pi / n_angles)
    return out
