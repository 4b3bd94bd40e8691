"""The 3D–chemistry join: one row per particle with its geometry, its surroundings and its SOC.

For a volume with XANES maps and a phase segmentation (NMC, CBD, pore), each NMC particle
(watershed of the NMC phase, :func:`~src.analysis.particles.separate_particles`) gets

* ``diameter_um`` (equivalent sphere of the hull), ``sphericity`` and ``crack_porosity`` from
  :func:`~src.analysis.particles.measure_particles` (the same numbers as ``analyze.py``);
* ``cbd_coverage``: the share of the particle's free surface (the voxels just outside it that are
  not NMC) that is CBD, i.e. CBD / (CBD + pore) in its one-voxel outer shell;
* ``distance_to_side_um``: the distance of its centroid to one face of the volume along
  ``axis`` (the separator or the current-collector side, ``side`` = ``low`` or ``high``);
* the SOC (and edge-energy) mean, spread and core–shell profile of
  :func:`src.xanes.maps.particle_statistics`.

:func:`correlations` tests the SOC against size and CBD coverage (Spearman's rank
correlation with its p-value); :func:`join_figure` draws both scatters.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from src.analysis.particles import measure_particles

__all__ = ["correlations", "join_figure", "particle_join"]


def particle_join(
    rows: list[dict[str, Any]], regions: np.ndarray, labels: np.ndarray, phases: dict[str, int],
    voxel_nm: float, axis: int = 0, side: str = "low", surface_sigma: float = 1.0,
) -> list[dict[str, Any]]:
    """Add the particles' geometry and surroundings to the SOC rows of ``particle_statistics``.

    Args:
        rows: per-particle rows (``particle`` = id in ``regions``) from
            :func:`src.xanes.maps.particle_statistics`.
        regions: ``(z, y, x)`` int particle ids covering the hulls (0 = none).
        labels: ``(z, y, x)`` phase indices of the segmentation.
        phases: index of ``NMC``, ``CBD`` and ``pore`` in ``labels`` (CBD or pore may be absent: -1).
        voxel_nm: voxel size (nm).
        axis: the axis across the electrode (0 = z).
        side: ``low`` (index 0 of ``axis``) or ``high``: the face distances are measured from.
        surface_sigma: smoothing of the particle meshes (sphericity).

    Returns:
        The rows with ``diameter_um``, ``volume_um3``, ``sphericity``, ``crack_porosity``,
        ``cbd_coverage``, ``distance_to_side_um``, ``touches_border`` added.

    Raises:
        ValueError: a 2D volume, a bad ``axis`` or ``side``.
    """
    if regions.ndim != 3 or labels.shape != regions.shape:
        raise ValueError(f"the particle join needs 3D regions and labels of one shape, got "
                         f"{regions.shape} and {labels.shape}")
    if not 0 <= axis < 3:
        raise ValueError(f"particles.axis must be 0, 1 or 2, got {axis}")
    if side not in ("low", "high"):
        raise ValueError(f"particles.side must be 'low' or 'high', got {side!r}")
    voxel_um = voxel_nm / 1000.0
    nmc = labels == phases["NMC"]
    table = measure_particles(regions, nmc, surface_sigma=surface_sigma)
    n = int(regions.max())
    outside = regions == 0
    neighbour = ndimage.maximum_filter(regions, size=3)  # the particle next to a free voxel
    shell_id = np.where(outside & ~nmc, neighbour, 0).ravel()
    cbd = (labels == phases.get("CBD", -1)).ravel()
    pore = (labels == phases.get("pore", -1)).ravel()
    n_cbd = np.bincount(shell_id[cbd], minlength=n + 1)
    n_free = np.bincount(shell_id[cbd | pore], minlength=n + 1)
    length = regions.shape[axis]
    out = []
    for row in rows:
        i = int(row["particle"])
        c = float(table.centroid[i - 1, axis])
        dist = c if side == "low" else (length - 1 - c)
        hull = float(table.hull_voxels[i - 1])
        out.append({**row,
                    "diameter_um": (6.0 * hull / math.pi) ** (1 / 3) * voxel_um,
                    "volume_um3": hull * voxel_um ** 3,
                    "sphericity": float(table.sphericity[i - 1]),
                    "crack_porosity": float(table.crack_porosity[i - 1]),
                    "cbd_coverage": float(n_cbd[i] / n_free[i]) if n_free[i] else math.nan,
                    "distance_to_side_um": dist * voxel_um,
                    "touches_border": bool(table.touches_border[i - 1])})
    return out


def correlations(rows: list[dict[str, Any]], quantity: str = "soc_mean",
                 against: tuple[str, ...] = ("diameter_um", "cbd_coverage", "distance_to_side_um"),
                 ) -> dict[str, dict[str, float]]:
    """Spearman's rank correlation (rho, two-sided p-value, n) of ``quantity``.

    Against each column of ``against``, over the particles where both are finite.
    """
    from scipy.stats import spearmanr

    out = {}
    for col in against:
        pairs = np.array([(r.get(quantity, math.nan), r.get(col, math.nan)) for r in rows], float)
        ok = np.isfinite(pairs).all(1) if pairs.size else np.zeros(0, bool)
        if ok.sum() >= 3 and np.ptp(pairs[ok, 0]) > 0 and np.ptp(pairs[ok, 1]) > 0:
            res = spearmanr(pairs[ok, 0], pairs[ok, 1])
            out[col] = {"spearman_rho": float(res.statistic), "p_value": float(res.pvalue), "n": int(ok.sum())}
        else:
            out[col] = {"spearman_rho": math.nan, "p_value": math.nan, "n": int(ok.sum())}
    return out


def join_figure(path: Path, rows: list[dict[str, Any]], stats: dict[str, dict[str, float]],
                quantity: str = "soc_mean") -> Path:
    """PNG of ``quantity`` against particle size and CBD coverage (Spearman in the titles)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from src.data.io.figures import save_figure

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4))
    for ax, col, label in zip(axes, ("diameter_um", "cbd_coverage"),
                              ("particle diameter (µm)", "CBD coverage of the free surface"), strict=True):
        x = np.array([r.get(col, math.nan) for r in rows], float)
        y = np.array([r.get(quantity, math.nan) for r in rows], float)
        ax.scatter(x, y, s=14, color="steelblue")
        s = stats.get(col, {})
        ax.set_title(f"Spearman rho {s.get('spearman_rho', math.nan):.2f}, p = {s.get('p_value', math.nan):.2g} "
                     f"(n = {s.get('n', 0)})", fontsize=9)
        ax.set_xlabel(label)
        ax.set_ylabel(quantity.replace("_mean", " (particle mean)"))
    fig.tight_layout()
    return save_figure(fig, path)
