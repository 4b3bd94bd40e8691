"""Rigid (translation) registration between time steps and particle tracking by overlap.

Registration: :func:`estimate_shift` runs :func:`skimage.registration.phase_cross_correlation`
on a phase indicator of two (z, y, x) label volumes; the returned shift (voxels, z, y, x) is the
one to apply to ``moving`` to align it with ``reference``: ``moving(x) ≈ reference(x + shift)``,
a feature at ``p`` in the reference sits at ``p - shift`` in ``moving``.
:func:`register_series` chains or anchors these shifts over a series and
:func:`common_crop` gives each volume's slice of the region seen in all of them, so that the
aligned volumes are plain crops (integer shifts; labels are never interpolated).

Tracking: :func:`match_particles` pairs particle ids of two labelled particle volumes (same
grid) by voxel overlap (mutual best match above a minimum overlap);
:func:`track_particles` adds per-particle volume change and crack porosity change.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from src.analysis.particles import measure_particles

__all__ = ["common_crop", "estimate_shift", "match_particles", "register_series", "track_particles"]


def estimate_shift(
    reference: np.ndarray,
    moving: np.ndarray,
    *,
    upsample_factor: int = 1,
    window: bool = True,
    normalization: str | None = "phase",
) -> tuple[np.ndarray, float]:
    """Translation (z, y, x) in voxels that aligns ``moving`` to ``reference``, and its error.

    Both inputs are (z, y, x) (or (y, x)) arrays of the same shape (a bool/0-1 phase indicator works best
    for labels). Each is mean-subtracted and, with ``window``, multiplied by a Hann window so
    that the non-periodic faces do not dominate the phase correlation. ``upsample_factor`` > 1
    gives sub-voxel precision (1/factor). ``normalization``: ``"phase"`` (phase correlation,
    sharp peak, best on clean label images) or None (plain cross-correlation, which does not
    whiten the noise: better on noisy grey images).
    """
    from skimage.registration import phase_cross_correlation

    reference = np.asarray(reference, np.float32)
    moving = np.asarray(moving, np.float32)
    if reference.shape != moving.shape or reference.ndim not in (2, 3):
        raise ValueError(f"registration needs two (z, y, x) volumes (or two (y, x) images) of the "
                         f"same shape, got {reference.shape} and {moving.shape}")
    ref, mov = reference - reference.mean(), moving - moving.mean()
    if window:
        from scipy.signal.windows import hann

        win = np.ones(reference.shape, np.float32)
        for axis, n in enumerate(reference.shape):
            shape = [1] * reference.ndim
            shape[axis] = n
            win = win * hann(n, sym=False).astype(np.float32).reshape(shape)
        ref, mov = ref * win, mov * win
    shift, error, _ = phase_cross_correlation(ref, mov, upsample_factor=upsample_factor,
                                              normalization=normalization)
    return np.asarray(shift, float), float(error)


def register_series(
    indicators: Sequence[np.ndarray],
    *,
    reference: str = "previous",
    upsample_factor: int = 1,
    window: bool = True,
    max_shift_fraction: float = 0.25,
) -> list[np.ndarray]:
    """Shift of every volume relative to the first (voxels, (3,) each; the first is zeros).

    ``reference="previous"`` registers each volume to the one before and sums the shifts
    (robust to slow change); ``"first"`` registers each to the first directly. Raises
    ValueError naming the state when a shift exceeds ``max_shift_fraction`` of the size.
    """
    if reference not in ("previous", "first"):
        raise ValueError(f"reference must be 'previous' or 'first', got {reference!r}")
    shifts = [np.zeros(3)]
    for k in range(1, len(indicators)):
        ref = indicators[k - 1] if reference == "previous" else indicators[0]
        step, _ = estimate_shift(ref, indicators[k], upsample_factor=upsample_factor, window=window)
        if np.any(np.abs(step) > max_shift_fraction * np.asarray(indicators[k].shape)):
            raise ValueError(f"state {k}: registration shift {step.tolist()} voxels exceeds "
                             f"{max_shift_fraction:g} of the volume {indicators[k].shape}; the "
                             "states may not show the same region")
        shifts.append(step + (shifts[-1] if reference == "previous" else 0.0))
    return shifts


def common_crop(
    shapes: Sequence[Sequence[int]], shifts: Sequence[np.ndarray]
) -> list[tuple[slice, slice, slice]]:
    """Per volume, the slice of the region seen by all volumes (shifts rounded to voxels).

    With ``moving_k(x) = first(x + shift_k)``, ``volume_k[crop_k]`` are aligned crops of equal
    shape. Raises ValueError when the volumes do not overlap.
    """
    s = np.rint(np.asarray(shifts, float)).astype(int)
    n = np.asarray(shapes, int)
    lo = np.maximum(0, s.max(axis=0))  # in the first volume's coordinates
    hi = np.minimum(n[0], (n + s).min(axis=0))
    if np.any(hi <= lo):
        raise ValueError(f"the registered volumes do not overlap (shifts {s.tolist()})")
    return [tuple(slice(int(a - d), int(b - d)) for a, b, d in zip(lo, hi, sk, strict=True))
            for sk in s]


def match_particles(
    regions_a: np.ndarray, regions_b: np.ndarray, *, min_overlap: float = 0.5
) -> dict[str, np.ndarray]:
    """Pair particles of two labelled volumes (int ids, 0 = background, same shape).

    Particles ``i`` (in a) and ``j`` (in b) are matched when each is the other's largest
    overlap and overlap / min(|i|, |j|) ≥ ``min_overlap``. Returns arrays (M,): ``id_a``,
    ``id_b``, ``overlap_voxels``, ``iou``.
    """
    if regions_a.shape != regions_b.shape:
        raise ValueError(f"tracking needs aligned volumes of the same shape, got "
                         f"{regions_a.shape} and {regions_b.shape}")
    a, b = regions_a.ravel().astype(np.int64), regions_b.ravel().astype(np.int64)
    na, nb = int(a.max(initial=0)), int(b.max(initial=0))
    size_a = np.bincount(a, minlength=na + 1)
    size_b = np.bincount(b, minlength=nb + 1)
    both = (a > 0) & (b > 0)
    pairs, overlap = np.unique(a[both] * (nb + 1) + b[both], return_counts=True)
    pa, pb = pairs // (nb + 1), pairs % (nb + 1)
    empty = {k: np.zeros(0, np.int64) for k in ("id_a", "id_b", "overlap_voxels")}
    if pairs.size == 0:
        return {**empty, "iou": np.zeros(0)}
    best_b = np.zeros(na + 1, np.int64)
    best_a = np.zeros(nb + 1, np.int64)
    best_ov_a = np.zeros(na + 1, np.int64)
    best_ov_b = np.zeros(nb + 1, np.int64)
    for i, j, ov in zip(pa, pb, overlap, strict=True):  # (N pairs) small: one per touching pair
        if ov > best_ov_a[i]:
            best_ov_a[i], best_b[i] = ov, j
        if ov > best_ov_b[j]:
            best_ov_b[j], best_a[j] = ov, i
    keep = (best_b[pa] == pb) & (best_a[pb] == pa)
    keep &= overlap >= min_overlap * np.minimum(size_a[pa], size_b[pb])
    pa, pb, overlap = pa[keep], pb[keep], overlap[keep]
    iou = overlap / (size_a[pa] + size_b[pb] - overlap)
    return {"id_a": pa, "id_b": pb, "overlap_voxels": overlap, "iou": iou}


def track_particles(
    regions_a: np.ndarray,
    regions_b: np.ndarray,
    mask_a: np.ndarray,
    mask_b: np.ndarray,
    voxel_um: float,
    *,
    min_overlap: float = 0.5,
) -> dict[str, Any]:
    """Match particles of two aligned states and measure each matched particle's change.

    ``regions_*``: particle ids (z, y, x) from
    :func:`~src.analysis.particles.separate_particles` (hulls); ``mask_*``: the particle phase
    (bool), for crack porosity. Returns ``particles`` (per match: ids, hull volumes µm³, solid
    volumes µm³, ``volume_change_percent`` of the hull, crack porosity before/after and its
    change, centroid displacement µm, ``touches_border`` in either state) and ``summary``
    (counts, matched fraction, medians over matches away from the faces).
    """
    match = match_particles(regions_a, regions_b, min_overlap=min_overlap)
    no_mesh = np.iinfo(np.int64).max  # sizes and cracks only: skip the per-particle meshes
    with np.errstate(invalid="ignore", divide="ignore"):  # ids without voxels: NaN centroids
        ta = measure_particles(regions_a, mask_a, surface_sigma=0.0, min_mesh_voxels=no_mesh)
        tb = measure_particles(regions_b, mask_b, surface_sigma=0.0, min_mesh_voxels=no_mesh)
    ia, ib = match["id_a"] - 1, match["id_b"] - 1
    hull_a, hull_b = ta.hull_voxels[ia].astype(float), tb.hull_voxels[ib].astype(float)
    change = 100.0 * (hull_b / hull_a - 1.0)
    crack_change = tb.crack_porosity[ib] - ta.crack_porosity[ia]
    border = ta.touches_border[ia] | tb.touches_border[ib]
    displacement = np.linalg.norm(tb.centroid[ib] - ta.centroid[ia], axis=1) * voxel_um
    interior = ~border
    particles = {
        "id_a": match["id_a"].tolist(),
        "id_b": match["id_b"].tolist(),
        "iou": match["iou"].tolist(),
        "volume_a_um3": (hull_a * voxel_um**3).tolist(),
        "volume_b_um3": (hull_b * voxel_um**3).tolist(),
        "solid_volume_a_um3": (ta.solid_voxels[ia] * voxel_um**3).tolist(),
        "solid_volume_b_um3": (tb.solid_voxels[ib] * voxel_um**3).tolist(),
        "volume_change_percent": change.tolist(),
        "crack_porosity_a": ta.crack_porosity[ia].tolist(),
        "crack_porosity_b": tb.crack_porosity[ib].tolist(),
        "crack_porosity_change": crack_change.tolist(),
        "displacement_um": displacement.tolist(),
        "touches_border": border.tolist(),
    }
    na, nb = int(regions_a.max(initial=0)), int(regions_b.max(initial=0))

    def median(x: np.ndarray) -> float:
        return float(np.median(x)) if x.size else float("nan")

    summary = {
        "particles_a": na,
        "particles_b": nb,
        "matched": int(ia.size),
        "matched_fraction_a": ia.size / na if na else float("nan"),
        "matched_fraction_b": ib.size / nb if nb else float("nan"),
        "matched_interior": int(interior.sum()),
        "median_volume_change_percent": median(change[interior]),
        "total_volume_change_percent": (100.0 * (hull_b[interior].sum() / hull_a[interior].sum() - 1.0)
                                        if interior.any() else float("nan")),
        "median_crack_porosity_change": median(crack_change[interior]),
        "mean_crack_porosity_change": (float(np.mean(crack_change[interior]))
                                       if interior.any() else float("nan")),
        "median_iou": median(match["iou"]),
        "median_displacement_um": median(displacement),
    }
    return {"particles": particles, "summary": summary}
