"""The same edge analysis one spectrum at a time with scipy/numpy (a Python loop over voxels).

The straightforward way most scripts do it — ``np.polyfit`` for the pre/post-edge lines (or
``np.linalg.lstsq`` of the level and the jump with a shared :class:`EdgeShape`),
``scipy.signal.savgol_filter``, an interpolated crossing refined by ``np.polyfit`` of a local cubic
and Newton's method, ``scipy.optimize.nnls`` for the linear combination. It is the *peer* of :func:`src.xanes.maps.analyze_stack` in
``benchmarks/xanes.py`` (speed) and its cross-check in the tests (same numbers).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls
from scipy.signal import savgol_filter

from src.xanes.edge import EdgeRanges, EdgeShape

__all__ = ["analyze_spectrum_loop"]


def _crossing(e: np.ndarray, y: np.ndarray, level: float = 0.5) -> float:
    for i in range(len(e) - 1):
        if y[i] < level <= y[i + 1]:
            return e[i] + (level - y[i]) / (y[i + 1] - y[i]) * (e[i + 1] - e[i])
    return np.nan


def _local_cubic(e: np.ndarray, y: np.ndarray, x0: float, half_width: float, degree: int,
                 iterations: int = 2) -> float:
    """Refine the crossing ``x0`` of 0.5: polyfit within ``± half_width`` eV, Newton from ``x0``."""
    for _ in range(iterations):
        near = np.abs(e - x0) <= half_width
        if near.sum() < degree + 2:
            break
        c = np.polyfit((e[near] - x0) / half_width, y[near], degree)
        x, rising = 0.0, True
        for _ in range(8):
            p, dp = np.polyval(c, x), np.polyval(np.polyder(c), x)
            rising &= dp > 0
            x = float(np.clip(x - (p - 0.5) / (dp if dp > 0 else 1.0), -1.0, 1.0))
        if rising:
            x0 = x0 + x * half_width
    return x0


def _one(energies: np.ndarray, mu: np.ndarray, refs: np.ndarray | None, r: EdgeRanges,
         smooth_points: int, shape: EdgeShape | None, edge_fit: tuple[float, int, float] | None,
         ) -> dict[str, float]:
    de = energies - r.e0
    pre = (energies >= r.e0 + r.pre[0]) & (energies <= r.e0 + r.pre[1])
    post = (energies >= r.e0 + r.post[0]) & (energies <= r.e0 + r.post[1])
    if shape is None:
        p_pre = np.polyfit(de[pre], mu[pre], 1)
        p_post = np.polyfit(de[post], mu[post], r.post_order)
    else:  # one-parameter fits of the level and the jump with the shared shapes
        line = 1 + shape.pre_slope * de
        level = np.linalg.lstsq(line[pre, None], mu[pre], rcond=None)[0][0]
        curve = np.polyval(shape.post[::-1], de)
        jump = np.linalg.lstsq(curve[post, None], mu[post] - level * line[post], rcond=None)[0][0]
        p_pre = np.array([level * shape.pre_slope, level])
        p_post = jump * np.asarray(shape.post[::-1])
        p_post[-2:] += p_pre
    pre_line = np.polyval(p_pre, de)
    jump = np.polyval(p_post, 0.0) - np.polyval(p_pre, 0.0)
    norm = (mu - pre_line) / jump
    if r.flatten:
        excess = (np.polyval(p_post, de) - pre_line) / jump - 1.0
        norm = norm - np.where(de > 0, excess, 0.0)
    out = {"jump": jump}
    win = (energies >= r.e0 + r.edge[0]) & (energies <= r.e0 + r.edge[1])
    if edge_fit is None:
        y = savgol_filter(norm, smooth_points | 1, 2, mode="nearest") if smooth_points > 2 else norm
        out["edge_energy"] = _crossing(energies[win], y[win])
    else:
        half_width, degree, coarse = edge_fit
        points = int(round(coarse / np.median(np.diff(energies[win])))) | 1
        y = savgol_filter(norm, points, 2, mode="nearest") if points > 2 else norm
        x0 = _crossing(energies[win], y[win])
        out["edge_energy"] = x0 if np.isnan(x0) else _local_cubic(energies, norm, x0, half_width, degree)
    wl = (energies >= r.e0 + r.white_line[0]) & (energies <= r.e0 + r.white_line[1])
    e_wl, n_wl = energies[wl], norm[wl]
    k = int(np.argmax(n_wl))
    near = np.abs(e_wl - e_wl[k]) <= r.white_line_half_width
    c2, c1, _ = np.polyfit(e_wl[near] - e_wl[k], n_wl[near], 2)
    out["white_line"] = e_wl[k] - c1 / (2 * c2) if c2 < 0 else e_wl[k]
    if refs is not None:
        w, res = nnls(refs, norm)
        out["weights"] = w
        out["lcf_residual"] = res / np.sqrt(len(norm))
    return out


def analyze_spectrum_loop(
    energies: np.ndarray, spectra: np.ndarray, references: np.ndarray | None = None,
    ranges: EdgeRanges | None = None, smooth_points: int = 7, shape: EdgeShape | None = None,
    edge_fit: tuple[float, int, float] | None = (4.5, 3, 6.0),
) -> dict[str, np.ndarray]:
    """Edge analysis of ``spectra`` ``(E, N)`` one voxel at a time.

    ``references`` ``(E, K)`` normalised end-members; ``shape``: shared normalisation shape (None:
    per-voxel lines); ``edge_fit``: ``(half_width_eV, degree, coarse_smooth_eV)`` of the
    local-polynomial half jump (None: the crossing after ``smooth_points`` smoothing). Returns
    arrays ``(N,)`` (``weights``: ``(K, N)``).
    """
    r = ranges or EdgeRanges()
    rows = [_one(np.asarray(energies, float), spectra[:, i].astype(float), references, r, smooth_points,
                 shape, edge_fit) for i in range(spectra.shape[1])]
    out = {k: np.array([row[k] for row in rows]) for k in rows[0] if k != "weights"}
    if references is not None:
        out["weights"] = np.array([row["weights"] for row in rows]).T
    return out
