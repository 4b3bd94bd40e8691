"""Connectivity (percolation) and tortuosity factor of one binary phase along volume axes.

Axes follow the (z, y, x) convention: axis 0 = ``z``, 1 = ``y``, 2 = ``x``.

The tortuosity factor solves steady diffusion in the phase with fixed concentrations on the two
faces of the axis and no flux through the others, in the finite-volume form of taufactor
(Kench et al., SoftwareX 2023): unit conductance between face-sharing phase voxels, conductance 2
between a face voxel and the face (half a voxel away), concentration at voxel centres. Two
solvers give the same answer:

* ``solver="amg"`` (CPU default): the symmetric positive-definite system on the voxels of the
  clusters that touch both faces, solved by conjugate gradients preconditioned with algebraic
  multigrid (pyamg: plain aggregation, W-cycles, forward/backward Gauss-Seidel; float32
  operators) to a relative residual of ``rtol``;
* ``solver="taufactor"``: taufactor's over-relaxed Jacobi iteration, the peer, and the fast one
  on a GPU (``device="auto"`` picks it when CUDA is present).
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from scipy import ndimage, sparse
from threadpoolctl import threadpool_limits
from tqdm.auto import tqdm

from src.analysis.parallel import fork_start
from src.config import resolve_device

__all__ = ["AXIS_NAMES", "TORTUOSITY_SOLVERS", "percolating_fraction", "through_clusters",
           "tortuosity_factor", "tortuosity_many"]

log = logging.getLogger(__name__)

TORTUOSITY_SOLVERS = ("auto", "amg", "taufactor")

AXIS_NAMES: tuple[str, ...] = ("z", "y", "x")

#: the AMG cycle's pre- and post-smoother: forward then backward Gauss-Seidel (symmetric overall)
SMOOTHER = (("gauss_seidel", {"sweep": "forward"}), ("gauss_seidel", {"sweep": "backward"}))


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


def through_clusters(mask: np.ndarray, axis: int) -> np.ndarray:
    """Voxels of ``mask`` in 6-connected clusters that touch both faces of ``axis``.

    ``mask``: bool (z, y, x). The result is the part of the phase that carries a flux along
    ``axis``; bool, like ``mask``.
    """
    clusters, n = ndimage.label(mask)
    first = np.unique(np.take(clusters, 0, axis=axis))
    last = np.unique(np.take(clusters, -1, axis=axis))
    through = np.intersect1d(first, last)
    table = np.zeros(n + 1, bool)
    table[through[through > 0]] = True
    return table[clusters]


def _shifted(index: np.ndarray, axis: int, step: int) -> np.ndarray:
    """``index`` of each voxel's neighbour at ``step`` (±1) along ``axis``; -1 past the border."""
    out = np.full(index.shape, -1, index.dtype)
    src, dst = [slice(None)] * 3, [slice(None)] * 3
    src[axis], dst[axis] = (slice(1, None), slice(0, -1)) if step > 0 else (slice(0, -1), slice(1, None))
    out[tuple(dst)] = index[tuple(src)]
    return out


def _conduction_system(keep: np.ndarray) -> tuple[sparse.csr_matrix, np.ndarray, np.ndarray, np.ndarray]:
    """The finite-volume system ``A c = b`` on the voxels of ``keep`` (bool, axis 0 = flow).

    Face concentrations 0 (first layer) and 1 (last layer). The CSR rows are written directly,
    their columns already sorted (in raster order the neighbours -z, -y, -x, the voxel, +x, +y,
    +z have increasing indices), with no coordinate sort. Returns ``A`` (CSR, float32), ``b``
    and the unknown indices of the first and last layers.
    """
    n = int(keep.sum())
    itype = np.int32 if 7 * n < 2**31 - 1 else np.int64
    index = np.full(keep.shape, -1, itype)
    index[keep] = np.arange(n, dtype=itype)
    cols = np.empty((n, 7), itype)
    for k, (axis, step) in enumerate(((0, -1), (1, -1), (2, -1), (None, 0), (2, 1), (1, 1), (0, 1))):
        cols[:, k] = np.arange(n, dtype=itype) if axis is None else _shifted(index, axis, step)[keep]
    valid = cols >= 0
    per_row = valid.sum(axis=1)
    data = np.full((n, 7), -1.0, np.float32)  # entries past the border are dropped with ``valid``
    first, last = index[0][keep[0]], index[-1][keep[-1]]
    diag = (per_row - 1).astype(np.float32)  # unit conductance to each phase neighbour
    diag[first] += 2.0  # and 2 to the face half a voxel away
    diag[last] += 2.0
    data[:, 3] = diag
    indptr = np.zeros(n + 1, itype)
    np.cumsum(per_row, out=indptr[1:])
    a = sparse.csr_matrix((data[valid], cols[valid], indptr), shape=(n, n))
    a.has_sorted_indices = True
    b = np.zeros(n, np.float32)
    b[last] = 2.0
    return a, b, first, last


def _tortuosity_amg(mask: np.ndarray, keep: np.ndarray, rtol: float, iter_limit: int,
                    conv_crit: float) -> dict:
    """τ along axis 0 of ``mask`` by AMG-preconditioned CG on its through-clusters ``keep``.

    See the module doc.
    """
    try:
        import pyamg
    except ImportError as exc:
        raise ImportError("solver='amg' needs pyamg (pip install pyamg), or use solver=taufactor") from exc
    start = time.perf_counter()
    a, b, first, last = _conduction_system(keep)
    built = time.perf_counter()
    # plain aggregation (its setup is cheap), forward Gauss-Seidel before and backward after (a
    # symmetric cycle: CG needs one) and W-cycles: on the 256^3 electrode 23 iterations of 1.1 s
    # against 41 of 1.1 s with pyamg's default V-cycle, at the same tau (see docs/statistics.md)
    ml = pyamg.smoothed_aggregation_solver(a, symmetry="symmetric", smooth=None, improve_candidates=None,
                                           max_coarse=1000, presmoother=SMOOTHER[0],
                                           postsmoother=SMOOTHER[1])
    x0 = np.zeros_like(b)  # a linear field along the axis: the answer of a straight channel
    length = mask.shape[0]
    x0[:] = ((np.nonzero(keep)[0] + 0.5) / length).astype(np.float32)
    residuals: list[float] = []
    digits = -math.log10(rtol)
    with tqdm(total=round(digits, 2), desc=f"tortuosity ({b.size} voxels)", unit="digit",
              leave=False, disable=None, bar_format="{l_bar}{bar}| residual 1e-{n:.1f}/1e-{total:.1f} "
              "[{elapsed}<{remaining}]") as bar:
        def step(_x: np.ndarray) -> None:  # residual decades gained so far: a bar with time left
            if len(residuals) > 1 and residuals[0] > 0:
                done = min(digits, -math.log10(max(residuals[-1] / residuals[0], 1e-300)))
                bar.update(round(max(done - bar.n, 0.0), 2))

        # one BLAS thread (the coarse level's dense solve is the only BLAS call, and small): the
        # same answer to the last bit in this process and in tortuosity_many's workers
        with threadpool_limits(1, user_api="blas"):
            x = ml.solve(b, x0=x0, tol=rtol, accel="cg", maxiter=iter_limit, residuals=residuals,
                         callback=step, cycle="W")
    flux_in = 2.0 * float(x[first].astype(np.float64).sum())
    flux_out = 2.0 * float((1.0 - x[last].astype(np.float64)).sum())
    flux = 0.5 * (flux_in + flux_out)
    mismatch = abs(flux_in - flux_out) / flux if flux > 0 else math.inf
    area = mask.shape[1] * mask.shape[2]
    d_rel = flux * length / area
    eps = float(mask.mean())
    log.debug("tortuosity amg: %d unknowns, build %.1f s, solve %.1f s, %d iterations",
              b.size, built - start, time.perf_counter() - built, len(residuals))
    return {"tortuosity_factor": eps / d_rel if d_rel > 0 else math.inf,
            "relative_diffusivity": d_rel, "volume_fraction": eps,
            "converged": bool(mismatch <= conv_crit), "iterations": max(len(residuals) - 1, 0),
            "flux_mismatch": mismatch}


def _tortuosity_taufactor(mask: np.ndarray, device: str, conv_crit: float, iter_limit: int) -> dict:
    try:
        import taufactor
    except ImportError as exc:
        raise ImportError(
            "solver='taufactor' needs the 'taufactor' package: pip install taufactor "
            "(or use solver=amg, or tortuosity=false)"
        ) from exc
    solver = taufactor.Solver(np.ascontiguousarray(mask, dtype=np.uint8), device=device)
    with contextlib.redirect_stdout(io.StringIO()):  # taufactor prints progress/warnings
        tau = solver.solve(verbose=False, conv_crit=conv_crit, iter_limit=iter_limit)
    return {
        "tortuosity_factor": float(np.asarray(tau).ravel()[0]),
        "relative_diffusivity": float(np.asarray(solver.D_eff).ravel()[0] / solver.D_0),
        "volume_fraction": float(mask.mean()),
        "converged": bool(solver.converged),
        "iterations": int(solver.iter),
    }


def tortuosity_factor(
    mask: np.ndarray,
    axis: int,
    *,
    solver: str = "auto",
    device: str = "cpu",
    conv_crit: float = 1e-2,
    iter_limit: int = 10000,
    rtol: float = 1e-5,
) -> dict[str, float | bool | int]:
    """Tortuosity factor τ of a binary phase for steady diffusion along ``axis``.

    Args:
        mask: bool (z, y, x), the conducting phase.
        axis: 0, 1 or 2 (z, y, x), the direction of the flux.
        solver: ``"amg"`` (CPU), ``"taufactor"`` (SOR; CPU or GPU) or ``"auto"``: taufactor on
            the GPU when ``device`` resolves to CUDA, else amg (see the module doc).
        device: ``cpu``, ``cuda`` or ``auto`` (taufactor only).
        conv_crit: the answer counts as converged when the fluxes through the layers agree to
            this relative difference (taufactor's criterion; amg: inlet vs outlet flux).
        iter_limit: maximum iterations.
        rtol: relative residual at which the amg CG stops.

    Returns:
        ``tortuosity_factor`` τ = ε / (D_eff/D₀) (dimensionless, ``inf`` when the phase does not
        percolate), ``relative_diffusivity`` D_eff/D₀, ``volume_fraction`` ε, ``converged`` and
        ``iterations``.
    """
    if solver not in TORTUOSITY_SOLVERS:
        raise ValueError(f"tortuosity solver must be one of {TORTUOSITY_SOLVERS}, got {solver!r}")
    resolved = resolve_device(device)
    if solver == "auto":
        solver = "taufactor" if resolved.startswith("cuda") else "amg"
    img = np.moveaxis(np.asarray(mask, bool), axis, 0)
    keep = through_clusters(img, 0) if img.size else np.zeros(img.shape, bool)
    if not keep.any():
        return {"tortuosity_factor": math.inf, "relative_diffusivity": 0.0,
                "volume_fraction": float(img.mean()) if img.size else math.nan,
                "converged": True, "iterations": 0}
    if solver == "amg":
        return _tortuosity_amg(img, keep, rtol, iter_limit, conv_crit)
    return _tortuosity_taufactor(img, resolved, conv_crit, iter_limit)


def _solve_one(args: tuple) -> dict:
    mask, axis, kwargs = args
    return tortuosity_factor(mask, axis, **kwargs)


def tortuosity_many(
    tasks: Sequence[tuple[np.ndarray, int]], *, workers: int | None = None,
    min_parallel_voxels: int = 100**3, on_done: Callable[[], Any] | None = None, **kwargs: Any,
) -> list[dict[str, float | bool | int]]:
    """:func:`tortuosity_factor` of several ``(mask, axis)`` pairs, in parallel processes.

    The processes run on the CPU (each solve is single-threaded) when there are several large
    ones.

    Args:
        tasks: ``(mask, axis)`` pairs, masks bool (z, y, x).
        workers: processes (None: one per CPU core, at most one per task); 1 = in this process.
        min_parallel_voxels: smaller masks are solved in this process (starting a process
            costs more than their solve).
        on_done: called after each solve (progress).
        **kwargs: keyword arguments of :func:`tortuosity_factor`.

    Returns:
        One result dict per task, in order.
    """
    return tortuosity_start(tasks, workers=workers, min_parallel_voxels=min_parallel_voxels, **kwargs)(on_done)


def tortuosity_start(
    tasks: Sequence[tuple[np.ndarray, int]], *, workers: int | None = None,
    min_parallel_voxels: int = 100**3, background: bool = False, **kwargs: Any,
) -> Callable[[Callable[[], Any] | None], list[dict[str, float | bool | int]]]:
    """Start :func:`tortuosity_many`'s solves in processes now; ``collect(on_done)`` waits for them.

    Args:
        tasks: ``(mask, axis)`` pairs, masks bool (z, y, x).
        workers: processes (None: one per CPU core, at most one per task); 1 = at collection.
        min_parallel_voxels: smaller masks are solved in this process, at collection.
        background: solve in other processes even with one worker (this process does other
            work meanwhile).
        **kwargs: keyword arguments of :func:`tortuosity_factor`.

    Returns:
        ``collect(on_done)`` -> one result dict per task, in order; ``.background`` tells
        whether the solves run in other processes meanwhile.
    """
    on_gpu = kwargs.get("device", "cpu") != "cpu" and kwargs.get("solver", "auto") != "amg"
    small = all(m.size < min_parallel_voxels for m, _ in tasks)
    parallel = not (on_gpu or small) and (background or min(workers or os.cpu_count() or 1, len(tasks)) > 1)
    collect = fork_start(_solve_one, [(m, a, kwargs) for m, a in tasks], parallel=parallel, workers=workers,
                         in_process=not background)
    collect.background = parallel  # type: ignore[attr-defined]
    return collect
