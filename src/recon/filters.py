"""The FBP filters (Kak & Slaney, ch. 3), shared by FBP and gridrec.

Used by :mod:`src.recon.fbp` and :mod:`src.recon.gridrec`: the spatially defined band-limited ramp
``h[0] = 1/4, h[odd n] = -1/(pi n)^2, h[even n] = 0`` windowed in the frequency domain.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["FILTERS", "filter_response", "padded_size"]

FILTERS = ("ramp", "shepp-logan", "cosine", "hamming", "hann")


def padded_size(n_det: int, pad: bool) -> int:
    """Length of a zero-padded projection row.

    The next power of two >= ``2 n_det`` (or ``n_det`` without padding).
    """
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
