"""Aligning the energies of a spectral stack (the sample drifts between them).

Alignment (:func:`align_stack`): each energy's image is registered by cross-correlation
(:func:`src.analysis.registration.estimate_shift`, Hann-windowed, sub-pixel by upsampling,
refined iteratively) to a reference and shifted back with a cubic spline
(:func:`scipy.ndimage.shift`). The default reference is the *mean of the stack*, re-formed from
the aligned energies after each round: it has ~√E times less noise than any single energy and a
contrast between the pre- and post-edge ones. The shifts are then anchored to their mean (the
aligned stack sits at the average position of the sample, not at one drifted energy), which is
where a segmentation of the mean image, or of an undrifted scan, lies.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from src.analysis.registration import estimate_shift

__all__ = ["align_stack"]


def align_stack(
    stack: np.ndarray, reference: int | str = "mean", upsample_factor: int = 20, order: int = 3,
    iterations: int = 2, progress: bool = False, rounds: int = 2, anchor: str | None = None,
    normalization: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Align every energy of ``stack`` ``(E, ...)`` to a reference image.

    ``reference``: ``"mean"`` (the mean of the stack, re-formed from the aligned energies for
    ``rounds`` rounds) or the index of one energy (one round). ``anchor``: ``"mean"`` (shifts
    minus their mean) or ``"reference"`` (the reference energy's frame); default: ``"mean"``
    for the mean reference, ``"reference"`` for an index. ``normalization``: None (plain
    cross-correlation, robust to noise) or ``"phase"``. The residual shift of each energy is
    re-estimated ``iterations`` times (the Hann window biases a single estimate towards 0).

    Returns ``(aligned, shifts)``: the aligned stack (float32, same shape) and ``(E, ndim)``
    shifts (voxels) that were applied, i.e. the estimated drift is ``-shifts``.
    """
    stack = np.asarray(stack, np.float32)
    if stack.ndim not in (3, 4):
        raise ValueError(f"stack must be (E, y, x) or (E, z, y, x), got shape {stack.shape}")
    by_mean = isinstance(reference, str)
    if by_mean and reference != "mean":
        raise ValueError(f"align reference must be 'mean' or an energy index, got {reference!r}")
    anchor = anchor or ("mean" if by_mean else "reference")
    if anchor not in ("mean", "reference"):
        raise ValueError(f"align anchor must be 'mean' or 'reference', got {anchor!r}")
    if not by_mean and not -stack.shape[0] <= int(reference) < stack.shape[0]:
        raise ValueError(f"align reference {reference} is not an energy index of {stack.shape[0]}")

    def place(e: int, shift: np.ndarray) -> np.ndarray:
        return ndimage.shift(stack[e], shift, order=order, mode="nearest") if np.any(shift) else stack[e]

    ref = stack.mean(0) if by_mean else stack[int(reference)]
    shifts = np.zeros((stack.shape[0], stack.ndim - 1))
    aligned = stack.copy()
    for _ in range(max(1, rounds) if by_mean else 1):
        for e in tqdm(range(stack.shape[0]), desc="align energies", disable=not progress, leave=False):
            for _ in range(iterations):  # refine the residual shift
                step, _ = estimate_shift(ref, aligned[e], upsample_factor=upsample_factor,
                                         normalization=normalization)
                if not np.any(step):
                    break
                shifts[e] += step
                aligned[e] = place(e, shifts[e])
        if anchor == "mean":  # re-place every energy at its anchored shift
            shifts -= shifts.mean(0)
            aligned = np.stack([place(e, shifts[e]) for e in range(stack.shape[0])])
        ref = aligned.mean(0)
    return aligned, shifts
