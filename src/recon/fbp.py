"""Filtered back-projection on the project's parallel-beam operator, and a tomopy-like ``recon``.

FBP follows Kak & Slaney (ch. 3): the ramp is the spatially defined band-limited kernel
``h[0] = 1/4, h[odd n] = -1/(pi n)^2, h[even n] = 0`` (no DC offset error), zero-padded to the
next power of two >= ``2 n_det`` and windowed in the frequency domain; the filtered sinogram is
back-projected with the exact adjoint and scaled by ``pi / A``, so that FBP of the projection of
an image returns the image's values (attenuation per pixel).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from src.recon.filters import FILTERS, filter_response, padded_size
from src.recon.operators import ParallelBeamProjector

__all__ = ["ALGORITHMS", "BACKENDS", "FILTERS", "check_projections", "fbp", "filter_response", "filter_sinogram", "recon"]

ALGORITHMS = ("fbp", "gridrec", "sirt", "cgls", "tv")
BACKENDS = ("torch", "astra", "tomopy")
DEFAULT_NUM_ITER = {"sirt": 50, "cgls": 20, "tv": 200}


def filter_sinogram(sino: Tensor, filter_name: str = "ramp", pad: bool = True) -> Tensor:
    """Convolve each projection row of ``sino`` ``(..., n_det)`` with the windowed ramp kernel."""
    n_det = sino.shape[-1]
    n = padded_size(n_det, pad)
    real_dtype = sino.dtype
    response = filter_response(n, filter_name, dtype=real_dtype, device=sino.device)
    spectrum = torch.fft.rfft(sino, n=n, dim=-1) * response
    return torch.fft.irfft(spectrum, n=n, dim=-1)[..., :n_det]


def fbp(
    sino: Tensor,
    projector: ParallelBeamProjector,
    filter_name: str = "ramp",
    pad: bool = True,
) -> Tensor:
    """Filtered back-projection ``(B, A, n_det) -> (B, H, W)`` for angles covering ``[0, pi)``.

    Output is in the units of the line integrals per pixel (e.g. attenuation per voxel).
    Differentiable with respect to ``sino``.
    """
    filtered = filter_sinogram(sino, filter_name, pad)
    return projector.adjoint(filtered) * (np.pi / projector.n_angles)


def check_projections(tomo: np.ndarray, theta: Sequence[float] | np.ndarray) -> np.ndarray:
    """Validate tomopy-ordered projections ``(angles, rows, cols)`` against ``theta``.

    Accepts one sinogram ``(angles, cols)`` (returned as ``(angles, 1, cols)``). Raises
    ``ValueError`` for a wrong rank, an angle count that does not match axis 0 (with a hint when
    another axis matches, i.e. the stack looks transposed) and NaN/inf values.
    """
    tomo = np.asarray(tomo)
    if tomo.ndim == 2:
        tomo = tomo[:, None]
    if tomo.ndim != 3:
        raise ValueError(f"tomo must be (angles, rows, cols), got shape {tomo.shape}")
    n_theta = int(np.size(theta))
    if tomo.shape[0] != n_theta:
        hint = ""
        if n_theta in tomo.shape[1:]:
            axis = 1 + tomo.shape[1:].index(n_theta)
            hint = (f"; axis {axis} has {n_theta} entries: the stack looks transposed, tomopy "
                    f"order is (angles, rows, cols), e.g. np.moveaxis(tomo, {axis}, 0)")
        raise ValueError(f"theta has {n_theta} angles but tomo {tomo.shape} has {tomo.shape[0]} "
                         f"along axis 0{hint}")
    if not np.all(np.isfinite(tomo)):
        bad = int(np.size(tomo) - np.count_nonzero(np.isfinite(tomo)))
        raise ValueError(f"tomo has {bad} NaN/inf values: check flat/dark normalisation and "
                         "use minus_log's clipping (src.recon.preprocessing)")
    return tomo


def _solve(
    sino: Tensor, op: ParallelBeamProjector, algorithm: str, num_iter: int, filter_name: str,
    kwargs: dict[str, Any],
) -> Tensor:
    from src.recon import iterative

    if algorithm == "fbp":
        return fbp(sino, op, filter_name, pad=kwargs.get("pad", True))
    if algorithm == "sirt":
        return iterative.sirt(sino, op, num_iter, **kwargs)
    if algorithm == "cgls":
        return iterative.cgls(sino, op, num_iter, **kwargs)
    return iterative.tv_pdhg(sino, op, n_iter=num_iter, **kwargs)


def recon(
    tomo: np.ndarray,
    theta: Sequence[float] | np.ndarray,
    center: float | Sequence[float] | np.ndarray | None = None,
    algorithm: str = "fbp",
    backend: str = "torch",
    num_iter: int | None = None,
    filter_name: str = "ramp",
    chunk: int = 32,
    device: str | torch.device = "cpu",
    **kwargs: Any,
) -> np.ndarray:
    """tomopy-like reconstruction of projections ``(angles, rows, cols)`` -> ``(rows, cols, cols)``.

    Args:
        tomo: tomopy-ordered projections (line integrals, i.e. after ``-log``); one sinogram
            ``(angles, cols)`` gives ``(1, cols, cols)``.
        theta: angles, radians, covering ``[0, pi)`` for FBP.
        center: detector column of the rotation axis (default ``cols / 2``), one value or one
            per row.
        algorithm: one of :data:`ALGORITHMS` (``"tv"`` is :func:`~src.recon.iterative.tv_pdhg`,
            ``"gridrec"`` the NUFFT Fourier method of :func:`~src.recon.gridrec.gridrec`: CPU,
            needs ``finufft``; kwargs ``pad``, ``eps``).
        backend: ``"torch"`` (ours), ``"astra"`` (ASTRA 2D CPU: fbp/sirt/cgls) or ``"tomopy"``
            (if importable).
        num_iter: iterations of the iterative algorithms (default :data:`DEFAULT_NUM_ITER`).
        filter_name: FBP filter, one of :data:`FILTERS`.
        chunk: slices per batch (torch backend).
        device: torch device (torch backend), e.g. ``"cuda"``.
        **kwargs: passed to the solver (``nonneg``, ``relaxation``, ``lam``, ``pad``...).

    Returns:
        float32 ``(rows, cols, cols)``, attenuation per pixel.
    """
    algorithm = algorithm.lower()
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; available: {BACKENDS}")
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; available: {ALGORITHMS}")
    if filter_name not in FILTERS:
        raise ValueError(f"unknown filter {filter_name!r}; choose one of {FILTERS}")
    tomo = check_projections(tomo, theta)
    n_angles, rows, cols = tomo.shape
    n_iter = num_iter if num_iter is not None else DEFAULT_NUM_ITER.get(algorithm, 1)
    centers = np.broadcast_to(
        np.asarray(cols / 2.0 if center is None else center, dtype=np.float64), (rows,))
    if backend != "torch":
        from src.recon import backends

        out = np.empty((rows, cols, cols), dtype=np.float32)
        for c in np.unique(centers):
            idx = np.flatnonzero(centers == c)
            if backend == "astra":
                out[idx] = backends.astra_recon(tomo[:, idx], theta, float(c), algorithm,
                                                num_iter, filter_name, **kwargs)
            else:
                out[idx] = backends.tomopy_recon(tomo[:, idx], theta, float(c), algorithm,
                                                 num_iter, filter_name, **kwargs)
        return out
    out = np.empty((rows, cols, cols), dtype=np.float32)
    if algorithm == "gridrec":
        from src.recon.gridrec import gridrec

        if torch.device(device).type != "cpu":
            raise ValueError(f"algorithm=gridrec runs on the CPU (finufft), not device={device}; "
                             "use algorithm=fbp on a GPU")
        for z in range(0, rows, chunk):
            sino = tomo[:, z:z + chunk].transpose(1, 0, 2)
            out[z:z + chunk] = gridrec(sino, theta, centers[z:z + chunk], filter_name, **kwargs)
        return out
    with torch.no_grad():
        for c in np.unique(centers):
            idx = np.flatnonzero(centers == c)
            op = ParallelBeamProjector((cols, cols), theta, n_det=cols, center=float(c))
            for z in range(0, idx.size, chunk):
                sel = idx[z:z + chunk]
                sino = np.ascontiguousarray(tomo[:, sel].transpose(1, 0, 2), dtype=np.float32)
                x = _solve(torch.from_numpy(sino).to(device), op, algorithm, n_iter,
                           filter_name, kwargs)
                out[sel] = x.cpu().numpy()
    return out
