"""Filtered back-projection on the project's parallel-beam operator, and a tomopy-like ``recon``.

FBP follows Kak & Slaney (ch. 3): the ramp is the spatially defined band-limited kernel
``h[0] = 1/4, h[odd n] = -1/(pi n)^2, h[even n] = 0`` (no DC offset error), zero-padded to the
next power of two >= ``2 n_det`` and windowed in the frequency domain; the filtered sinogram is
back-projected with the exact adjoint and scaled by ``pi / A``, so that FBP of the projection of
an image returns the image's values (attenuation per pixel).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from src.recon.operators import ParallelBeamProjector

__all__ = ["FILTERS", "fbp", "filter_response", "filter_sinogram", "recon"]

FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")
ALGORITHMS = ("fbp",)


def _padded_size(n_det: int, pad: bool) -> int:
    return int(2 ** np.ceil(np.log2(2 * n_det))) if pad else n_det


def filter_response(
    n: int, filter_name: str = "ramp", dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Real frequency response ``(n // 2 + 1,)`` (rfft layout) of the windowed ramp filter."""
    name = filter_name.lower()
    if name not in FILTERS:
        raise ValueError(f"unknown filter {filter_name!r}; choose one of {FILTERS}")
    k = np.fft.fftfreq(n) * n  # signed integer offsets in FFT order
    kernel = np.zeros(n)
    kernel[0] = 0.25
    odd = (k.astype(int) % 2) == 1
    kernel[odd] = -1.0 / (np.pi * k[odd]) ** 2
    response = np.fft.rfft(kernel).real
    f = np.fft.rfftfreq(n)  # cycles per detector pixel, 0 .. 0.5
    window = {
        "ramp": np.ones_like(f),
        "shepp-logan": np.sinc(f),
        "cosine": np.cos(np.pi * f),
        "hamming": 0.54 + 0.46 * np.cos(2 * np.pi * f),
        "hann": 0.5 + 0.5 * np.cos(2 * np.pi * f),
    }[name]
    return torch.as_tensor(response * window, dtype=dtype, device=device)


def filter_sinogram(sino: Tensor, filter_name: str = "ramp", pad: bool = True) -> Tensor:
    """Convolve each projection row of ``sino`` ``(..., n_det)`` with the windowed ramp kernel."""
    n_det = sino.shape[-1]
    n = _padded_size(n_det, pad)
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


def recon(
    tomo: np.ndarray,
    theta: Sequence[float] | np.ndarray,
    center: float | None = None,
    algorithm: str = "fbp",
    filter_name: str = "ramp",
    chunk: int = 32,
) -> np.ndarray:
    """tomopy-like reconstruction of projections ``(angles, rows, cols)`` -> ``(rows, cols, cols)``.

    ``center`` is the detector column of the rotation axis (default ``cols / 2``). float32 output.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; available: {ALGORITHMS}")
    tomo = np.asarray(tomo)
    if tomo.ndim != 3:
        raise ValueError(f"tomo must be (angles, rows, cols), got shape {tomo.shape}")
    n_angles, rows, cols = tomo.shape
    if len(np.ravel(theta)) != n_angles:
        raise ValueError(f"theta has {len(np.ravel(theta))} angles, tomo has {n_angles}")
    op = ParallelBeamProjector((cols, cols), theta, n_det=cols, center=center)
    out = np.empty((rows, cols, cols), dtype=np.float32)
    with torch.no_grad():
        for z in range(0, rows, chunk):
            sino = np.ascontiguousarray(tomo[:, z:z + chunk].transpose(1, 0, 2), dtype=np.float32)
            out[z:z + chunk] = fbp(torch.from_numpy(sino), op, filter_name).numpy()
    return out
