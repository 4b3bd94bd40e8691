"""The same edge analysis one spectrum at a time with scipy/numpy (a Python loop over voxels).

The straightforward way most scripts do it — ``np.polyfit`` for the pre/post-edge lines,
``scipy.signal.savgol_filter``, an interpolated crossing, ``scipy.optimize.nnls`` for the linear
combination. It is the *peer* of :func:`src.analysis.xanes_maps.analyze_stack` in
``benchmarks/xanes.py`` (speed) and its cross-check in the tests (same numbers).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import nnls
from scipy.signal import savgol_filter

from src.analysis.xanes import EdgeRanges

__all__ = ["analyze_spectrum_loop"]


def _one(energies: np.ndarray, mu: np.ndarray, refs: np.ndarray | None, r: EdgeRanges,
         smooth_points: int) -> dict[str, float]:
    de = energies - r.e0
    pre = (energies >= r.e0 + r.pre[0]) & (energies <= r.e0 + r.pre[1])
    post = (energies >= r.e0 + r.post[0]) & (energies <= r.e0 + r.post[1])
    p_pre = np.polyfit(de[pre], mu[pre], 1)
    p_post = np.polyfit(de[post], mu[post], r.post_order)
    pre_line = np.polyval(p_pre, de)
    jump = np.polyval(p_post, 0.0) - np.polyval(p_pre, 0.0)
    norm = (mu - pre_line) / jump
    if r.flatten:
        excess = (np.polyval(p_post, de) - pre_line) / jump - 1.0
        norm = norm - np.where(de > 0, excess, 0.0)
    out = {"jump": jump}
    y = savgol_filter(norm, smooth_points | 1, 2, mode="nearest") if smooth_points > 2 else norm
    win = (energies >= r.e0 + r.edge[0]) & (energies <= r.e0 + r.edge[1])
    e_w, y_w = energies[win], y[win]
    edge = np.nan
    for i in range(len(e_w) - 1):
        if y_w[i] < 0.5 <= y_w[i + 1]:
            edge = e_w[i] + (0.5 - y_w[i]) / (y_w[i + 1] - y_w[i]) * (e_w[i + 1] - e_w[i])
            break
    out["edge_energy"] = edge
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
    ranges: EdgeRanges | None = None, smooth_points: int = 7,
) -> dict[str, np.ndarray]:
    """Edge analysis of ``spectra`` ``(E, N)`` one voxel at a time; ``references`` ``(E, K)``
    normalised end-members. Returns arrays ``(N,)`` (``weights``: ``(K, N)``)."""
    r = ranges or EdgeRanges()
    rows = [_one(np.asarray(energies, float), spectra[:, i].astype(float), references, r, smooth_points)
            for i in range(spectra.shape[1])]
    out = {k: np.array([row[k] for row in rows]) for k in rows[0] if k != "weights"}
    if references is not None:
        out["weights"] = np.array([row["weights"] for row in rows]).T
    return out
