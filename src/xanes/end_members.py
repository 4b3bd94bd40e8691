"""End-members derived from the stack itself (``references: from_data``).

Where the measured electrode's states lie beyond the shipped references (charged NMC is
Ni⁴⁺-rich, beyond LiNiO₂'s Ni³⁺), a fraction of LiNiO₂ saturates at 1 for every charged voxel.
:func:`end_members_from_data` finds the electrode's own extreme states instead:

1. the normalised spectra of the valid voxels are projected on their first principal component
   (a coordinate along the spectral change that averages the noise of all energies), oriented
   so that it grows with the half-jump edge energy;
2. the voxels of the lowest and the highest ``fraction`` of that coordinate are the two
   clusters of extreme states; their mean spectra start the end-members;
3. ``iterations`` rounds of MCR-ALS refine them: non-negative, closed (summing to one)
   concentrations of every sampled voxel by the exact NNLS of :func:`~src.xanes.edge.linear_combination_fit`,
   then the end-member spectra by least squares on those concentrations. Non-negative
   concentrations push the end-members out to the edge of the data cloud, so the SOC of the
   most discharged and the most charged voxels is 0 and 1.

The SOC is then the fraction of the charged end-member: 0–1 across the electrode's own range of
states (it measures where a voxel lies between the electrode's extremes, not an absolute
oxidation state).
"""

from __future__ import annotations

import numpy as np

from src.xanes.edge import linear_combination_fit

__all__ = ["end_members_from_data"]


def end_members_from_data(
    norm: np.ndarray, edge: np.ndarray, fraction: float = 0.02, iterations: int = 10,
    max_voxels: int = 20000, seed: int = 0,
) -> np.ndarray:
    """Two end-members ``(E, 2)`` (discharged, charged) from normalised spectra.

    Args:
        norm: ``(E, N)`` normalised spectra of valid voxels (NaN columns are dropped).
        edge: ``(N,)`` their half-jump edge energies (eV), to orient the states.
        fraction: share of the voxels in each extreme cluster.
        iterations: MCR-ALS refinement rounds (0: the cluster means).
        max_voxels: voxels sampled for the refinement.
        seed: of that sample.

    Returns:
        ``(E, 2)``: the lower-edge (discharged) and the higher-edge (charged) end-member.

    Raises:
        ValueError: fewer than 20 usable voxels, or no spread of states to separate.
    """
    norm = np.asarray(norm, float)
    edge = np.asarray(edge, float)
    ok = np.isfinite(norm).all(0) & np.isfinite(edge)
    y, e = norm[:, ok], edge[ok]
    if y.shape[1] < 20:
        raise ValueError(f"references=from_data needs >= 20 voxels with a valid edge, got {y.shape[1]}")
    rng = np.random.default_rng(seed)
    if y.shape[1] > max_voxels:
        pick = rng.choice(y.shape[1], max_voxels, replace=False)
        y, e = y[:, pick], e[pick]
    mean = y.mean(1, keepdims=True)
    u, _, _ = np.linalg.svd(y - mean, full_matrices=False)
    score = u[:, 0] @ (y - mean)
    if np.corrcoef(score, e)[0, 1] < 0:
        score = -score
    if not np.ptp(score) > 0:
        raise ValueError("references=from_data: the voxels' spectra do not vary; no states to separate")
    k = max(5, int(round(fraction * score.size)))
    order = np.argsort(score)
    s = np.stack([y[:, order[:k]].mean(1), y[:, order[-k:]].mean(1)], 1)
    for _ in range(iterations):
        c = linear_combination_fit(y, s, nonnegative=True, sum_to_one=True).weights  # (2, N)
        good = np.isfinite(c).all(0)
        s_new = np.linalg.lstsq(c[:, good].T, y[:, good].T, rcond=None)[0].T  # (E, 2)
        if not np.isfinite(s_new).all():
            break
        s = s_new
    return s
