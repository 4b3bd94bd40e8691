"""Connectivity (percolation) and tortuosity factor of one binary phase along volume axes.

Axes follow the (z, y, x) convention: axis 0 = ``z``, 1 = ``y``, 2 = ``x``.
"""

from __future__ import annotations

import contextlib
import io
import math

import numpy as np
from scipy import ndimage

from src.config import resolve_device

__all__ = ["AXIS_NAMES", "percolating_fraction", "tortuosity_factor"]

AXIS_NAMES: tuple[str, ...] = ("z", "y", "x")


def percolating_fraction(mask: np.ndarray, axes: tuple[int, ...] = (0, 1, 2)) -> dict[str, float]:
    """Fraction of the phase's voxels in 6-connected clusters touching both faces of each axis.

    ``mask``: bool (z, y, x). Returns ``{axis name: fraction in [0, 1]}`` (NaN for an empty
    phase).
    """
    clusters, n = ndimage.label(mask)  # default structure = 6-connectivity
    sizes = np.bincount(clusters.ravel(), minlength=n + 1)
    total = sizes[1:].sum()
    out: dict[str, float] = {}
    for axis in axes:
        first = np.unique(np.take(clusters, 0, axis=axis))
        last = np.unique(np.take(clusters, -1, axis=axis))
        through = np.intersect1d(first, last)
        through = through[through > 0]
        out[AXIS_NAMES[axis]] = float(sizes[through].sum() / total) if total else math.nan
    return out


def tortuosity_factor(
    mask: np.ndarray,
    axis: int,
    *,
    device: str = "cpu",
    conv_crit: float = 1e-2,
    iter_limit: int = 10000,
) -> dict[str, float | bool | int]:
    """Tortuosity factor τ of a binary phase for steady diffusion along ``axis`` (taufactor).

    Solves with :class:`taufactor.Solver` (fixed concentrations on the two faces of ``axis``,
    no flux through the others, SOR until the flux through every layer agrees to
    ``conv_crit``). Returns ``tortuosity_factor`` τ = ε / (D_eff/D₀) (dimensionless, ``inf``
    when the phase does not percolate), ``relative_diffusivity`` D_eff/D₀, ``volume_fraction``
    ε, ``converged`` and ``iterations``.
    """
    try:
        import taufactor
    except ImportError as exc:
        raise ImportError(
            "tortuosity needs the 'taufactor' package: pip install taufactor "
            "(or compute the statistics with tortuosity=false)"
        ) from exc
    eps = float(mask.mean()) if mask.size else math.nan
    if not percolating_fraction(mask, (axis,))[AXIS_NAMES[axis]] > 0:
        return {"tortuosity_factor": math.inf, "relative_diffusivity": 0.0,
                "volume_fraction": eps, "converged": True, "iterations": 0}
    img = np.ascontiguousarray(np.moveaxis(mask, axis, 0), dtype=np.uint8)
    solver = taufactor.Solver(img, device=resolve_device(device))
    with contextlib.redirect_stdout(io.StringIO()):  # taufactor prints progress/warnings
        tau = solver.solve(verbose=False, conv_crit=conv_crit, iter_limit=iter_limit)
    return {
        "tortuosity_factor": float(np.asarray(tau).ravel()[0]),
        "relative_diffusivity": float(np.asarray(solver.D_eff).ravel()[0] / solver.D_0),
        "volume_fraction": eps,
        "converged": bool(solver.converged),
        "iterations": int(solver.iter),
    }
