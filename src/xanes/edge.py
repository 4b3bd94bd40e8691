"""Per-voxel XANES edge analysis, vectorised over voxels (no Python loop over spectra).

Spectra are arrays with the **energy first**: ``(E,)`` for one spectrum, ``(E, N)`` for N
voxels, ``(E, z, y, x)`` / ``(E, y, x)`` for a spectral stack; energies in eV, strictly
increasing. The steps follow the usual XANES practice (Athena/Larch conventions):

* :func:`normalize_spectra`: a straight pre-edge line and a polynomial post-edge curve are
  fitted by least squares over the configured ranges (one shared design matrix, so all voxels
  are one ``lstsq``); the edge jump is ``post(e0) - pre(e0)``; the normalised spectrum is
  ``(mu - pre(E)) / jump``, optionally *flattened* above ``e0`` (the post-edge curvature
  removed) so that it tends to 1. With a shared :class:`EdgeShape` (:func:`edge_shape`, from the
  mean spectrum of many voxels) each voxel fits only the *level* of the pre-edge line and the
  *size* of the jump, the line's slope and the post-edge curvature being the common ones: one
  parameter per fit instead of two, which roughly halves the noise of the jump extrapolated
  to ``e0`` from few pre/post-edge energies (it dominates the half-jump error of noisy voxels);
* :func:`half_jump_energy`: the first upward crossing of 0.5 in the normalised spectrum inside
  the edge window (linear interpolation between samples; optional Savitzky–Golay smoothing
  along energy first);
* :func:`half_jump_energy_fit`: the noise-robust version: the crossing located coarsely on a
  smoothed copy, then a least-squares cubic fitted to the samples within ``± half_width`` eV of
  it and solved for 0.5 by Newton's method (twice, re-centred), all voxels at once;
* :func:`steepest_slope_energy`: the maximum of dμ/dE, refined by a parabola through the 3
  samples around it;
* :func:`white_line_energy`: the vertex of a least-squares parabola fitted to the samples within
  ``± half_width`` eV of the maximum (a peak fit, batched 3×3 normal equations);
* :func:`linear_combination_fit`: non-negative least squares of the normalised spectra against
  end-member spectra, optionally with the weights summing to one; exact, by solving every
  support subset of the (few) end-members for all voxels at once and keeping the best feasible
  one.

Edge definitions differ by several eV where the white line is strong: always say which one a
number uses (``half_jump`` vs ``steepest_slope``).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "EdgeRanges",
    "EdgeShape",
    "LCFResult",
    "NormalizedSpectra",
    "edge_shape",
    "find_e0",
    "fit_ranges_to_scan",
    "reference_overlap",
    "half_jump_energy",
    "half_jump_energy_fit",
    "interpolate_references",
    "linear_combination_fit",
    "load_spectrum",
    "mixture_edge_lookup",
    "normalize_spectra",
    "smooth_spectra",
    "steepest_slope_energy",
    "white_line_energy",
    "MIN_RELATIVE_JUMP",
    "window_rows",
]


@dataclass
class EdgeRanges:
    """Energy ranges of the edge analysis, in eV **relative to** ``e0`` (ranges: ``[lo, hi]``).

    ``pre``/``post``: fit ranges of the pre-edge line and the post-edge curve (``post_order`` 1 =
    line, 2 = quadratic); ``edge``: where the half-jump crossing and the steepest slope are
    searched; ``white_line``: where the white-line maximum is searched; ``white_line_half_width``:
    half width (eV) of the parabola fit around the maximum.
    """

    e0: float | None = 8346.0
    pre: tuple[float, float] = (-60.0, -15.0)
    post: tuple[float, float] = (20.0, 60.0)
    edge: tuple[float, float] = (-12.0, 12.0)
    white_line: tuple[float, float] = (-4.0, 16.0)
    post_order: int = 1
    flatten: bool = True
    white_line_half_width: float = 3.0

    def __post_init__(self) -> None:
        for name in ("pre", "post", "edge", "white_line"):
            lo, hi = (float(v) for v in getattr(self, name))
            if not lo < hi:
                raise ValueError(f"EdgeRanges.{name} must be [lo, hi] with lo < hi, got {[lo, hi]}")
            setattr(self, name, (lo, hi))
        if self.pre[1] > 0 or self.post[0] < 0:
            raise ValueError(f"pre-edge range {self.pre} must end below e0 and post-edge range "
                             f"{self.post} must start above it (relative eV)")
        if self.post_order not in (0, 1, 2):
            raise ValueError(f"post_order must be 0 (constant), 1 or 2, got {self.post_order}")
        if self.e0 is not None:
            self.e0 = float(self.e0)

    def absolute(self, name: str) -> tuple[float, float]:
        """A range in absolute eV."""
        if self.e0 is None:
            raise ValueError("EdgeRanges.e0 is None (to be found from the data): resolve it first "
                             "(src.xanes.edge.find_e0 / fit_ranges_to_scan)")
        lo, hi = getattr(self, name)
        return (self.e0 + lo, self.e0 + hi)

    def describe(self) -> str:
        """Human-readable absolute fit ranges (printed with every result)."""
        if self.e0 is None:
            return "e0 from the data; ranges relative to it: " + ", ".join(
                f"{k} {getattr(self, k)}" for k in ("pre", "post", "edge", "white_line"))
        pre, post = self.absolute("pre"), self.absolute("post")
        kind = {0: "constant", 1: "line", 2: "quadratic"}[self.post_order]
        return (f"e0 {self.e0:.1f} eV; pre-edge line {pre[0]:.1f}-{pre[1]:.1f} eV; post-edge "
                f"{kind} {post[0]:.1f}-{post[1]:.1f} eV"
                f"{' (flattened)' if self.flatten else ''}")

    def as_dict(self) -> dict[str, Any]:
        """The ranges actually used, in absolute eV (for ``summary.json``)."""
        out: dict[str, Any] = {"e0_eV": self.e0, "post_order": self.post_order, "flatten": self.flatten}
        for name in ("pre", "post", "edge", "white_line"):
            out[f"{name}_eV"] = list(self.absolute(name)) if self.e0 is not None else None
        return out


@dataclass
class NormalizedSpectra:
    """Result of :func:`normalize_spectra`; arrays shaped like the input (energy first).

    ``significant`` is False where the edge jump is not distinguishable from rounding:
    ``|jump| <= min_relative_jump * scale``, ``scale`` being the larger rms magnitude of the
    spectrum over the pre-edge and post-edge fit ranges (see :data:`MIN_RELATIVE_JUMP`). Such
    spectra have no edge; their ``norm`` is NaN, so every energy and fraction derived from it is
    NaN on every CPU and library version.
    """

    norm: np.ndarray  # (E, ...) normalised spectra (0 before the edge, ~1 after; NaN if not significant)
    jump: np.ndarray  # (...) edge jump post(e0) - pre(e0), input units
    significant: np.ndarray  # (...) bool, the jump stands above rounding (see above)
    pre_noise: np.ndarray  # (...) rms residual of the pre-edge line, input units
    pre_coef: np.ndarray  # (2, ...) intercept, slope (per eV, about e0)
    post_coef: np.ndarray  # (order + 1, ...) polynomial in (E - e0)
    ranges: EdgeRanges = field(default_factory=EdgeRanges)


MIN_RELATIVE_JUMP = 1e-3
"""Smallest edge jump, relative to the spectrum's magnitude, that counts as an edge.

Float32 rounding of a spectrum is ~6e-8 of its magnitude and the least-squares line fits over
tens of energies amplify it at most ~1e2, so a jump below 1e-3 of the magnitude is rounding
with a wide margin, whatever the CPU's kernels; measured Ni K-edges of electrodes have jumps of
1e-2 (thin particle on a thick background) to ~1 of the pre-edge level. The noise-relative test
(``min_jump_snr`` of the per-voxel analysis) comes on top of this one; with noiseless data its
noise estimate is zero and this rule alone separates "no edge" from "edge".
"""


def _significant(jump: np.ndarray, y: np.ndarray, pre: slice, post: slice,
                 min_relative_jump: float) -> np.ndarray:
    """``|jump| > min_relative_jump * scale`` per column of ``y`` ``(E, N)``.

    See :class:`NormalizedSpectra`; False where the jump is not finite.
    """
    scale = np.maximum(np.sqrt((y[pre] ** 2).mean(0)), np.sqrt((y[post] ** 2).mean(0)))
    with np.errstate(invalid="ignore"):
        return np.isfinite(jump) & (np.abs(jump) > min_relative_jump * scale) & (np.abs(jump) > 0)


@dataclass(frozen=True)
class EdgeShape:
    """Pre-edge slope and post-edge shape shared by many voxels (see :func:`edge_shape`).

    ``pre_slope``: slope / level of the pre-edge line at ``e0`` (1/eV), so that a voxel's line is
    ``c (1 + pre_slope (E - e0))``; ``post``: coefficients ``(1, q1[, q2])`` of the post-edge
    curve *above* the pre-edge line, in units of the jump, as a polynomial in ``E - e0``.
    """

    pre_slope: float
    post: tuple[float, ...]


def edge_shape(energies: np.ndarray, spectra: np.ndarray, ranges: EdgeRanges | None = None) -> EdgeShape | None:
    """The :class:`EdgeShape` of the mean of ``spectra`` ``(E, ...)`` (NaN voxels ignored).

    None when the mean spectrum cannot define one: its pre-edge line comes within 5 % of the
    jump of zero over the fit ranges (a relative slope is then meaningless) or the jump is not
    positive. For a single spectrum the shared-shape normalisation equals the plain one.
    """
    ranges = ranges or EdgeRanges()
    energies, flat, _ = _check(energies, spectra)
    good = np.isfinite(flat).all(0)
    if not good.any():
        return None
    mean = flat[:, good].astype(np.float64).mean(1)
    n = normalize_spectra(energies, mean, ranges)
    pre0, pre1 = (float(v) for v in n.pre_coef)
    jump = float(n.jump)
    if not bool(n.significant):
        return None
    lo, hi = ranges.absolute("pre")[0] - ranges.e0, ranges.absolute("post")[1] - ranges.e0
    if not jump > 0 or min(abs(pre0 + pre1 * lo), abs(pre0 + pre1 * hi), abs(pre0)) < 0.05 * jump \
            or (pre0 + pre1 * lo) * (pre0 + pre1 * hi) <= 0:
        return None
    post = np.asarray(n.post_coef, np.float64).copy()
    if post.size < 2:  # a constant post-edge: above the pre-edge line it is a line
        post = np.concatenate([post, [0.0]])
    post[:2] -= (pre0, pre1)
    return EdgeShape(pre_slope=pre1 / pre0, post=tuple(float(v) for v in post / jump))


def load_spectrum(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Two-column text spectrum (energy, absorption) → ``(energies_eV, mu)`` float64.

    Whitespace, comma or semicolon separated; ``#`` comments skipped. Energies in keV (all
    below 100) are converted to eV. Raises ValueError naming the file if it is not two or more
    columns of numbers with strictly increasing energies.
    """
    path = Path(path)
    try:
        text = path.read_text().replace(",", " ").replace(";", " ")
        data = np.loadtxt(text.splitlines(), comments="#", ndmin=2)
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: not a readable spectrum (two columns: energy, absorption): {err}") from err
    if data.shape[1] < 2 or data.shape[0] < 3:
        raise ValueError(f"{path}: expected >= 3 rows of two columns (energy, absorption), got shape {data.shape}")
    energies, mu = data[:, 0].astype(float), data[:, 1].astype(float)
    if energies.max() < 100:
        energies = energies * 1000.0  # keV -> eV
    if np.any(np.diff(energies) <= 0):
        raise ValueError(f"{path}: energies must be strictly increasing")
    return energies, mu


def _argmax0(a: np.ndarray) -> np.ndarray:
    """``np.argmax(a, axis=0)`` (first maximum) by a loop over the short first axis.

    Row-wise vector operations are several times faster than numpy's strided argmax along axis 0.
    """
    best = a[0].copy()
    k = np.zeros(a.shape[1:], np.intp)
    for i in range(1, a.shape[0]):
        better = a[i] > best
        np.maximum(best, a[i], out=best)
        k += (i - k) * better  # branch-free: masked writes are slow on random masks
    return k


def _check(energies: np.ndarray, spectra: np.ndarray) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    energies = np.asarray(energies, float)
    spectra = np.asarray(spectra)
    if energies.ndim != 1 or spectra.shape[0] != energies.size:
        raise ValueError(f"spectra must have the energy axis first with {energies.size} energies, "
                         f"got shape {spectra.shape}")
    if np.any(np.diff(energies) <= 0):
        raise ValueError("energies must be strictly increasing")
    rest = spectra.shape[1:]
    return energies, spectra.reshape(energies.size, -1), rest


def _in(energies: np.ndarray, lo_hi: tuple[float, float], what: str, need: int) -> np.ndarray:
    sel = (energies >= lo_hi[0]) & (energies <= lo_hi[1])
    if sel.sum() < need:
        raise ValueError(f"the {what} range {lo_hi[0]:.1f}-{lo_hi[1]:.1f} eV holds {int(sel.sum())} "
                         f"energies, need >= {need} (energies span {energies[0]:.1f}-{energies[-1]:.1f} eV)")
    return sel


def _rows(selected: np.ndarray) -> slice:
    """The contiguous slice of a boolean row selection on sorted energies."""
    idx = np.flatnonzero(selected)
    return slice(int(idx[0]), int(idx[-1]) + 1)


def window_rows(energies: np.ndarray, window: tuple[float, float], margin: int = 0) -> slice:
    """Rows of ``energies`` inside ``window`` (absolute eV), widened by ``margin`` rows."""
    idx = np.flatnonzero((energies >= window[0]) & (energies <= window[1]))
    if idx.size == 0:
        raise ValueError(f"no energy inside the window {window}")
    return slice(max(int(idx[0]) - margin, 0), min(int(idx[-1]) + 1 + margin, energies.size))


def normalize_spectra(
    energies: np.ndarray, spectra: np.ndarray, ranges: EdgeRanges | None = None,
    shape: EdgeShape | None = None, min_relative_jump: float = MIN_RELATIVE_JUMP,
) -> NormalizedSpectra:
    """Pre-edge / post-edge normalisation of ``spectra`` ``(E, ...)`` (see the module doc).

    With ``shape`` the line slopes and the post-edge curvature are the shared ones. Spectra whose
    jump is below ``min_relative_jump`` of their magnitude get NaN ``norm`` (see
    :class:`NormalizedSpectra`).
    """
    ranges = ranges or EdgeRanges()
    if not min_relative_jump >= 0:
        raise ValueError(f"min_relative_jump must be >= 0, got {min_relative_jump}")
    if shape is not None:
        if len(shape.post) != max(ranges.post_order, 1) + 1:
            raise ValueError(f"EdgeShape.post has {len(shape.post)} coefficients, post_order "
                             f"{ranges.post_order} needs {max(ranges.post_order, 1) + 1}")
        return _normalize_shared(energies, spectra, ranges, shape, min_relative_jump)
    energies, flat, rest = _check(energies, spectra)
    dtype = np.result_type(flat.dtype, np.float32)  # float32 stays float32 (half the memory traffic)
    y = flat.astype(dtype, copy=False)
    de = energies - ranges.e0
    pre = _rows(_in(energies, ranges.absolute("pre"), "pre-edge", 2))
    post = _rows(_in(energies, ranges.absolute("post"), "post-edge", ranges.post_order + 1))
    a_pre = np.stack([np.ones_like(de[pre]), de[pre]], 1)
    pre_coef = np.linalg.pinv(a_pre).astype(dtype) @ y[pre]  # (2, N)
    a_post = np.stack([de[post] ** k for k in range(ranges.post_order + 1)], 1)
    post_coef = np.linalg.pinv(a_post).astype(dtype) @ y[post]  # (order+1, N)
    de_c = de.astype(dtype)[:, None]
    jump = post_coef[0] - pre_coef[0]  # both evaluated at e0
    resid = y[pre] - a_pre.astype(dtype) @ pre_coef
    pre_noise = np.sqrt((resid ** 2).mean(0))
    significant = _significant(jump, y, pre, post, min_relative_jump)
    inv = np.where(significant, 1 / np.where(significant, jump, 1), np.nan).astype(dtype)
    norm = np.multiply(de_c, pre_coef[1])  # the pre-edge line, then (y - line) / jump in place
    norm += pre_coef[0]
    np.subtract(y, norm, out=norm)
    norm *= inv
    if ranges.flatten:
        tail = slice(int(np.searchsorted(de, 0.0, side="right")), None)  # energies above e0
        post_curve = sum(post_coef[k] * de_c[tail] ** k for k in range(ranges.post_order + 1))
        pre_tail = pre_coef[0] + de_c[tail] * pre_coef[1]
        norm[tail] -= (post_curve - pre_tail) * inv - 1  # the post-edge curvature, 0 at e0
    return NormalizedSpectra(
        norm=norm.reshape(energies.size, *rest), jump=jump.reshape(rest),
        significant=significant.reshape(rest),
        pre_noise=pre_noise.reshape(rest), pre_coef=pre_coef.reshape(2, *rest),
        post_coef=post_coef.reshape(-1, *rest), ranges=ranges)


def _normalize_shared(
    energies: np.ndarray, spectra: np.ndarray, ranges: EdgeRanges, shape: EdgeShape,
    min_relative_jump: float,
) -> NormalizedSpectra:
    """:func:`normalize_spectra` with the shared ``shape``.

    A one-parameter least-squares fit of the pre-edge level, then of the jump, per voxel.
    """
    energies, flat, rest = _check(energies, spectra)
    dtype = np.result_type(flat.dtype, np.float32)
    y = flat.astype(dtype, copy=False)
    de = energies - ranges.e0
    pre = _rows(_in(energies, ranges.absolute("pre"), "pre-edge", 2))
    post = _rows(_in(energies, ranges.absolute("post"), "post-edge", max(ranges.post_order, 1)))
    line = 1.0 + shape.pre_slope * de  # (E,) the pre-edge line per unit level
    level = (line[pre] / (line[pre] @ line[pre])).astype(dtype) @ y[pre]  # (N,)
    pre_fit = line.astype(dtype)[:, None] * level  # (E, N)
    resid = y[pre] - pre_fit[pre]
    pre_noise = np.sqrt((resid ** 2).mean(0))
    curve = sum(c * de ** k for k, c in enumerate(shape.post))  # (E,) post-edge above the line, per unit jump
    jump = (curve[post] / (curve[post] @ curve[post])).astype(dtype) @ (y[post] - pre_fit[post])
    significant = _significant(jump, y, pre, post, min_relative_jump)
    inv = np.where(significant, 1 / np.where(significant, jump, 1), np.nan).astype(dtype)
    norm = y - pre_fit
    norm *= inv
    if ranges.flatten:
        tail = slice(int(np.searchsorted(de, 0.0, side="right")), None)
        norm[tail] -= (curve[tail] - 1.0).astype(dtype)[:, None]
    pre_coef = np.stack([level, level * shape.pre_slope])
    post_coef = np.stack([jump * c for c in shape.post])
    post_coef[:2] += pre_coef
    if ranges.post_order == 0:
        post_coef = post_coef[:1]
    return NormalizedSpectra(
        norm=norm.reshape(energies.size, *rest), jump=jump.reshape(rest),
        significant=significant.reshape(rest),
        pre_noise=pre_noise.reshape(rest), pre_coef=pre_coef.reshape(2, *rest),
        post_coef=post_coef.reshape(-1, *rest), ranges=ranges)


def smooth_spectra(energies: np.ndarray, y: np.ndarray, points: int) -> np.ndarray:
    """Savitzky–Golay smoothing along the energy axis (axis 0).

    Quadratic, ``points`` samples (0 = off); edges by repeating the end samples.
    """
    if points <= 2:
        return y
    y = np.asarray(y)
    op = _savgol_matrix(y.shape[0], points | 1).astype(np.result_type(y.dtype, np.float32))
    return (op @ y.reshape(y.shape[0], -1)).reshape(y.shape)  # one BLAS call for all voxels


@functools.lru_cache(maxsize=16)
def _savgol_matrix(n: int, window: int) -> np.ndarray:
    """The ``(n, n)`` operator of :func:`scipy.signal.savgol_filter` along an axis of length ``n``.

    Linear; quadratic, ``mode="nearest"``.
    """
    from scipy.signal import savgol_filter

    return savgol_filter(np.eye(n), window, 2, axis=0, mode="nearest")


def half_jump_energy(
    energies: np.ndarray, norm: np.ndarray, window: tuple[float, float], level: float = 0.5,
    smooth_points: int = 0,
) -> np.ndarray:
    """Energy (eV) of the first upward crossing of ``level`` in ``norm`` ``(E, ...)``.

    Inside ``window`` (absolute eV), linearly interpolated; NaN where there is none.
    """
    energies, y, rest = _check(energies, norm)
    rows = window_rows(energies, window, margin=smooth_points // 2)  # smoothing needs no more
    energies, y = energies[rows], y[rows]
    nan = ~np.isfinite(y).all(0)
    y = smooth_spectra(energies, np.where(nan[None], 0.0, y), smooth_points)
    sel = np.flatnonzero((energies >= window[0]) & (energies <= window[1]))
    if sel.size < 2:
        raise ValueError(f"edge window {window} holds fewer than 2 energies")
    ys = y[sel]
    k = np.zeros(ys.shape[1], np.intp)  # first upward crossing: scan the window rows
    has = np.zeros(ys.shape[1], bool)
    for i in range(ys.shape[0] - 1):
        new = ~has & (ys[i] < level) & (ys[i + 1] >= level)
        k += (i - k) * new  # branch-free update
        has |= new
    cols = np.arange(ys.shape[1])
    y0, y1 = ys[k, cols], ys[k + 1, cols]
    e0, e1 = energies[sel][k], energies[sel][k + 1]
    with np.errstate(invalid="ignore", divide="ignore"):
        e = e0 + (level - y0) / (y1 - y0) * (e1 - e0)
    return np.where(has & ~nan, e, np.nan).reshape(rest)


def half_jump_energy_fit(
    energies: np.ndarray, norm: np.ndarray, window: tuple[float, float], level: float = 0.5,
    half_width: float = 4.5, degree: int = 3, coarse_smooth: float = 6.0, iterations: int = 2,
) -> np.ndarray:
    """Energy (eV) where ``norm`` ``(E, ...)`` crosses ``level`` inside ``window``, robust to noise.

    ``window`` is in absolute eV; NaN where :func:`half_jump_energy` finds no coarse crossing.

    1. coarse: the first upward crossing after Savitzky–Golay smoothing over ``coarse_smooth``
       eV (the window in samples follows the median energy step inside ``window``);
    2. fine, ``iterations`` times: a least-squares polynomial of ``degree`` fitted to the
       samples within ``± half_width`` eV of the current estimate (widened to ``degree + 2``
       samples on coarse grids), solved for ``level`` by Newton's method from the estimate
       (clipped to the fit interval); voxels whose polynomial does not rise there keep the
       previous estimate. Widths are in eV so the estimator carries over to other grids.

    All voxels at once: the fit's moments are summed over the (few) sample offsets and the small
    normal equations are solved batched.
    """
    energies, y, rest = _check(energies, norm)
    if degree < 1:
        raise ValueError(f"degree must be >= 1, got {degree}")
    sel = np.flatnonzero((energies >= window[0]) & (energies <= window[1]))
    if sel.size < 2:
        raise ValueError(f"edge window {window} holds fewer than 2 energies")
    step = float(np.median(np.diff(energies[sel])))
    points = int(round(coarse_smooth / step)) | 1 if coarse_smooth > 0 else 0
    x0 = half_jump_energy(energies, y, window, level, smooth_points=points if points >= 3 else 0)
    found = np.isfinite(x0)
    nan = ~np.isfinite(y).all(0)
    ys = np.where(nan[None], 0.0, y).astype(np.float64)
    x0 = np.where(found, x0, energies[sel[0]])
    width = max(half_width, 0.5 * (degree + 1) * np.max(np.diff(energies[sel[0]:sel[-1] + 1]), initial=step))
    reach = int(min(np.ceil(width / np.min(np.diff(energies))) + 1, energies.size))
    cols = np.arange(ys.shape[1])
    n_mom = 2 * degree + 1
    for _ in range(iterations):
        centre = np.searchsorted(energies, x0)
        s_mom = np.zeros((n_mom, ys.shape[1]))
        t_mom = np.zeros((degree + 1, ys.shape[1]))
        for offset in range(-reach, reach + 1):
            r = centre + offset
            inside = (r >= 0) & (r < energies.size)
            r = np.clip(r, 0, energies.size - 1)
            x = (energies[r] - x0) / width  # scaled to [-1, 1] for conditioning
            w = (inside & (np.abs(x) <= 1.0)).astype(np.float64)
            xp = w
            yv = ys[r, cols]
            for k in range(n_mom):
                s_mom[k] += xp
                if k <= degree:
                    t_mom[k] += xp * yv
                xp = xp * x
        a = s_mom[np.add.outer(np.arange(degree + 1), np.arange(degree + 1))]  # (d+1, d+1, N) Hankel
        a = np.moveaxis(a, -1, 0)
        enough = s_mom[0] >= degree + 2
        a[~enough] = np.eye(degree + 1)
        coef = np.linalg.solve(a, t_mom.T[..., None])[..., 0]  # (N, d+1), ascending powers
        x = np.zeros(ys.shape[1])
        rising = np.ones(ys.shape[1], bool)
        for _ in range(8):  # Newton on p(x) = level from the current estimate
            p = coef[:, degree].copy()
            dp = np.zeros_like(p)
            for k in range(degree - 1, -1, -1):  # Horner: value and derivative
                dp = dp * x + p
                p = p * x + coef[:, k]
            rising &= dp > 0
            x = np.clip(x - (p - level) / np.where(dp > 0, dp, 1.0), -1.0, 1.0)
        x0 = np.where(rising & enough, x0 + x * width, x0)
    return np.where(found & ~nan, x0, np.nan).reshape(rest)


def steepest_slope_energy(
    energies: np.ndarray, norm: np.ndarray, window: tuple[float, float], smooth_points: int = 0
) -> np.ndarray:
    """Energy (eV) of the largest dμ/dE inside ``window``, refined by a 3-point parabola.

    NaN where ``norm`` has no finite value there.
    """
    energies, y, rest = _check(energies, norm)
    rows = window_rows(energies, window, margin=1 + smooth_points // 2)
    energies, y = energies[rows], smooth_spectra(energies[rows], y[rows], smooth_points)
    d = np.empty_like(y)  # central differences inside, one-sided at the ends
    d[1:-1] = (y[2:] - y[:-2]) / (energies[2:] - energies[:-2])[:, None]
    d[0] = (y[1] - y[0]) / (energies[1] - energies[0])
    d[-1] = (y[-1] - y[-2]) / (energies[-1] - energies[-2])
    return _refined_argmax(energies, d, window, half_width=None).reshape(rest)


def white_line_energy(
    energies: np.ndarray, norm: np.ndarray, window: tuple[float, float], half_width: float = 3.0
) -> np.ndarray:
    """Energy (eV) of the white-line peak.

    Parabola least-squares fit of the samples within ``± half_width`` eV of the maximum inside
    ``window`` (absolute eV); NaN where ``norm`` has no finite value there.
    """
    energies, y, rest = _check(energies, norm)
    return _refined_argmax(energies, y, window, half_width=half_width).reshape(rest)


def _refined_argmax(
    energies: np.ndarray, y: np.ndarray, window: tuple[float, float], half_width: float | None
) -> np.ndarray:
    """Peak position of ``y`` ``(E, N)`` inside ``window``.

    A least-squares parabola over the samples within ``half_width`` eV of the maximum (None: the 3
    samples around it); NaN for columns with no finite sample inside ``window``.
    """
    rows = window_rows(energies, window)
    e = energies[rows]
    if e.size < 3:
        raise ValueError(f"window {window} holds fewer than 3 energies")
    ys = y[rows]
    if np.isnan(ys).any():
        ys = np.where(np.isnan(ys), -np.inf, ys)
    k = _argmax0(ys)  # (N,)
    peak_e = e[k]
    if half_width is None:  # the 3 samples around the maximum
        m, centre = 1, np.clip(k, 1, e.size - 2)
    else:  # enough samples either side to cover half_width on the finest spacing
        m, centre = int(min(np.ceil(half_width / np.min(np.diff(e))), e.size // 2)), k
    cols = np.arange(ys.shape[1])
    s0, s1, s2, s3, s4, t0, t1, t2 = (np.zeros(ys.shape[1]) for _ in range(8))
    for offset in range(-m, m + 1):  # moments of the least-squares parabola, one offset at a time
        r = centre + offset
        inside = (r >= 0) & (r < e.size)
        r = np.clip(r, 0, e.size - 1)
        x = e[r] - peak_e  # centred for conditioning
        yv = ys[r, cols].astype(np.float64)
        inside &= np.isfinite(yv)
        if half_width is not None:
            inside &= np.abs(x) <= half_width
        w = inside.astype(np.float64)
        yv = np.where(inside, yv, 0.0)
        wx = w * x
        wx2 = wx * x
        s0 += w
        s1 += wx
        s2 += wx2
        s3 += wx2 * x
        s4 += wx2 * x * x
        t0 += w * yv
        t1 += wx * yv
        t2 += wx2 * yv
    # normal equations [[s0 s1 s2] [s1 s2 s3] [s2 s3 s4]] c = t, solved by Cramer's rule for c1, c2
    m00, m01, m02 = s2 * s4 - s3 * s3, s1 * s4 - s2 * s3, s1 * s3 - s2 * s2
    det = s0 * m00 - s1 * m01 + s2 * m02
    ok = (s0 >= 3) & (np.abs(det) > 1e-12 * np.maximum(s4, 1e-30) * np.maximum(s0, 1) ** 2)
    det = np.where(ok, det, 1.0)
    c1 = (s0 * (t1 * s4 - s3 * t2) - t0 * (s1 * s4 - s3 * s2) + s2 * (s1 * t2 - t1 * s2)) / det
    c2 = (s0 * (s2 * t2 - t1 * s3) - s1 * (s1 * t2 - t1 * s2) + t0 * (s1 * s3 - s2 * s2)) / det
    with np.errstate(invalid="ignore", divide="ignore"):
        vertex = peak_e - c1 / (2 * c2)
    good = ok & (c2 < 0)
    span = half_width if half_width is not None else np.max(np.diff(e))
    vertex = np.where(good, np.clip(vertex, peak_e - span, peak_e + span), peak_e)
    return np.where(np.isfinite(ys).any(0), np.clip(vertex, e[0], e[-1]), np.nan)


@dataclass
class LCFResult:
    """Linear-combination fit: ``weights`` ``(K, ...)``, ``residual`` rms ``(...)``."""

    weights: np.ndarray
    residual: np.ndarray


def reference_overlap(energies: np.ndarray, e_ref: np.ndarray) -> np.ndarray:
    """Bool ``(E,)``: the scan ``energies`` inside the span of a reference's energies ``e_ref``."""
    energies = np.asarray(energies, float)
    return (energies >= e_ref[0]) & (energies <= e_ref[-1])


def interpolate_references(
    energies: np.ndarray, references: Sequence[tuple[np.ndarray, np.ndarray]],
    ranges: EdgeRanges | None = None, normalize: bool = True,
) -> np.ndarray:
    """End-member spectra ``[(energies_eV, mu), ...]`` sampled at ``energies`` → ``(E, K)``.

    Each end-member is interpolated on its **overlap** with the scan; scan energies outside a
    reference's span are NaN in its column (:func:`linear_combination_fit` then fits the
    energies all end-members cover). With ``normalize`` each sampled end-member is normalised
    with ``ranges`` *on the same energies* as the data (those of the overlap), so that it is
    comparable with the normalised voxel spectra; where the overlap does not hold the pre- or
    post-edge window, the end-member is normalised on its own energies with the windows fitted
    to them (:func:`fit_ranges_to_scan`) and then interpolated. Raises ValueError naming the
    span when a reference does not overlap the scan at all.
    """
    energies = np.asarray(energies, float)
    ranges = ranges or EdgeRanges()
    cols = []
    for e_ref, mu_ref in references:
        e_ref, mu_ref = np.asarray(e_ref, float), np.asarray(mu_ref, float)
        inside = reference_overlap(energies, e_ref)
        if inside.sum() < 2:
            raise ValueError(f"reference spectrum spans {e_ref[0]:.1f}-{e_ref[-1]:.1f} eV and does not "
                             f"overlap the data ({energies[0]:.1f}-{energies[-1]:.1f} eV)")
        col = np.full(energies.size, np.nan)
        col[inside] = np.interp(energies[inside], e_ref, mu_ref)
        if normalize:
            try:
                col[inside] = normalize_spectra(energies[inside], col[inside], ranges).norm
            except ValueError:  # the overlap misses a window: normalise on the reference's grid
                own, _ = fit_ranges_to_scan(e_ref, ranges)
                col[inside] = np.interp(energies[inside], e_ref, normalize_spectra(e_ref, mu_ref, own).norm)
        cols.append(col)
    return np.stack(cols, 1)


def mixture_edge_lookup(
    energies: np.ndarray, references: Sequence[tuple[np.ndarray, np.ndarray]],
    ranges: EdgeRanges | None = None, n: int = 1001, step_eV: float = 0.05,
) -> tuple[np.ndarray, np.ndarray]:
    """Half-jump energy of the mixtures ``(1 - f) r0 + f r1`` of two end-members: ``(f, edge_eV)``.

    For ``n`` fractions ``f`` in [0, 1]. Normalisation uses the scan ``energies`` (as for the data;
    those both references cover); the crossing is located on a ``step_eV`` grid, so an LCF fraction
    becomes an edge energy without the sampling error of the scan.
    """
    ranges = ranges or EdgeRanges()
    if len(references) != 2:
        raise ValueError(f"the edge lookup needs exactly two end-members, got {len(references)}")
    energies = np.asarray(energies, float)
    inside = np.ones(energies.size, bool)
    for e_ref, _ in references:
        inside &= reference_overlap(energies, np.asarray(e_ref, float))
    energies = energies[inside]
    frac = np.linspace(0.0, 1.0, n)
    mix = np.stack([1 - frac, frac])
    scan = interpolate_references(energies, references, ranges, normalize=False) @ mix
    norm = normalize_spectra(energies, scan, ranges)
    lo, hi = ranges.absolute("edge")  # the crossing is searched there only
    fine = np.arange(max(energies[0], lo - 1.0), min(energies[-1], hi + 1.0), step_eV)
    dense = interpolate_references(fine, references, normalize=False) @ mix
    pre = norm.pre_coef[0] + (fine - ranges.e0)[:, None] * norm.pre_coef[1]
    return frac, half_jump_energy(fine, (dense - pre) / norm.jump, ranges.absolute("edge"))


def find_e0(energies: np.ndarray, spectrum: np.ndarray, smooth_eV: float = 1.5) -> float:
    """The edge energy ``e0`` (eV) of a (mean) spectrum ``(E,)``.

    The maximum of dμ/dE after smoothing.

    The spectrum is resampled on a uniform grid (step: the finest step of the scan, at least
    0.05 eV), smoothed by a Gaussian of ``max(smooth_eV, 1.5 × the 10th-percentile step)`` eV and
    differentiated; the maximum is refined by a parabola through its 3 grid points. Works for
    non-uniform steps (dense across the edge, coarse before and after).

    Args:
        energies: ``(E,)`` strictly increasing, eV.
        spectrum: ``(E,)`` absorption (any units).
        smooth_eV: Gaussian width (standard deviation, eV) of the smoothing.

    Returns:
        ``e0`` in eV.

    Raises:
        ValueError: fewer than 4 finite energies, or a flat spectrum.
    """
    from scipy.ndimage import gaussian_filter1d

    energies = np.asarray(energies, float)
    y = np.asarray(spectrum, float)
    ok = np.isfinite(y)
    energies, y = energies[ok], y[ok]
    if energies.size < 4:
        raise ValueError(f"e0 needs >= 4 finite energies of the mean spectrum, got {energies.size}")
    steps = np.diff(energies)
    step = max(float(steps.min()), 0.05, (energies[-1] - energies[0]) / 20000)
    grid = np.arange(energies[0], energies[-1] + 0.5 * step, step)
    dense = np.interp(grid, energies, y)
    sigma = max(smooth_eV, 1.5 * float(np.percentile(steps, 10))) / step  # the dense (edge) steps
    d = np.gradient(gaussian_filter1d(dense, sigma, mode="nearest"), grid)
    margin = min(int(np.ceil(2 * sigma)), grid.size // 4)  # the smoothing's edge effects
    inner = d[margin:grid.size - margin] if grid.size - 2 * margin >= 3 else d
    k = int(np.argmax(inner)) + (margin if inner is not d else 0)
    if not np.isfinite(d[k]) or d[k] <= 0:
        raise ValueError("the mean spectrum does not rise anywhere: no edge to find e0 from "
                         f"(energies {energies[0]:.1f}-{energies[-1]:.1f} eV)")
    if 0 < k < grid.size - 1:
        den = d[k - 1] - 2 * d[k] + d[k + 1]
        if den < 0:
            return float(grid[k] + 0.5 * step * (d[k - 1] - d[k + 1]) / den)
    return float(grid[k])


def fit_ranges_to_scan(
    energies: np.ndarray, ranges: EdgeRanges, e0: float | None = None, min_gap_eV: float = 3.0,
    min_line_eV: float = 50.0,
) -> tuple[EdgeRanges, list[str]]:
    """The ranges of ``ranges`` placed inside the measured ``energies`` (about ``e0``).

    Each window keeps its configured place where the scan holds it and is clipped to the scan
    otherwise; a clipped window that holds too few energies is replaced by the part of the scan
    on its side of the edge:

    * pre-edge line: ``[e0 + pre[0], e0 + pre[1]]`` clipped; with fewer than 2 energies, all
      energies below ``e0 - min_gap_eV`` (a narrow scan gets a short pre-edge line);
    * post-edge: ``[e0 + post[0], e0 + post[1]]`` clipped; with fewer than ``post_order + 1``
      energies, the upper half of the scan above ``e0`` (at least ``min_gap_eV`` above it); a
      post-edge window narrower than ``min_line_eV`` is fitted by a constant (``post_order`` 0,
      flat), one narrower than ``2 × min_line_eV`` by at most a line;
    * edge and white-line search windows: clipped to the scan.

    Args:
        energies: ``(E,)`` strictly increasing, eV.
        ranges: the configured ranges (relative to their ``e0``).
        e0: the edge energy to use (eV); None: ``ranges.e0``.
        min_gap_eV: the least distance of a pre- or post-edge window from ``e0``.
        min_line_eV: below this width the post-edge is flat (see above).

    Returns:
        ``(ranges, notes)``: the ranges used and one line per window that was moved.

    Raises:
        ValueError: the scan holds no energy ``min_gap_eV`` below ``e0`` (no pre-edge) or above
            it (no post-edge): no edge jump can be defined; the message names the scan and ``e0``.
    """
    energies = np.asarray(energies, float)
    e0 = float(ranges.e0 if e0 is None else e0)
    lo_e, hi_e = float(energies[0]), float(energies[-1])
    span = f"the scan spans {lo_e:.1f}-{hi_e:.1f} eV ({energies.size} energies), e0 = {e0:.1f} eV"
    below = energies[energies <= e0 - min_gap_eV]
    above = energies[energies >= e0 + min_gap_eV]
    if below.size == 0 or above.size == 0:
        side = "no pre-edge energies (none below e0 - 3 eV)" if below.size == 0 else \
            "no post-edge energies (none above e0 + 3 eV)"
        raise ValueError(f"cannot define an edge jump: {side}; {span}. Measure below and above the "
                         "edge, or give analysis.ranges.e0 if the edge was found at the wrong place")
    notes: list[str] = []

    def count(lo: float, hi: float) -> int:
        return int(((energies >= lo) & (energies <= hi)).sum())

    pre_lo, pre_hi = max(e0 + ranges.pre[0], lo_e), min(e0 + ranges.pre[1], hi_e)
    if count(pre_lo, pre_hi) < 2:
        pre_lo, pre_hi = lo_e, float(below[-1])
        if below.size < 2:
            raise ValueError(f"cannot define an edge jump: one pre-edge energy ({below[-1]:.1f} eV) "
                             f"is too few for the pre-edge line (need >= 2); {span}")
        notes.append(f"pre-edge window {e0 + ranges.pre[0]:.1f}-{e0 + ranges.pre[1]:.1f} eV holds "
                     f"< 2 energies: the pre-edge line is fitted on {pre_lo:.1f}-{pre_hi:.1f} eV")
    order = ranges.post_order
    post_lo, post_hi = max(e0 + ranges.post[0], lo_e), min(e0 + ranges.post[1], hi_e)
    if count(post_lo, post_hi) < order + 1:
        post_lo = max(e0 + min_gap_eV, e0 + 0.5 * (hi_e - e0))
        if count(post_lo, hi_e) == 0:
            post_lo = float(above[0])
        post_hi = hi_e
        notes.append(f"post-edge window {e0 + ranges.post[0]:.1f}-{e0 + ranges.post[1]:.1f} eV does not "
                     f"fit the scan: the post-edge is fitted on {post_lo:.1f}-{post_hi:.1f} eV")
    width = post_hi - post_lo
    new_order = 0 if width < min_line_eV else min(order, 1) if width < 2 * min_line_eV else order
    new_order = min(new_order, max(count(post_lo, post_hi) - 1, 0))
    if new_order != order:
        notes.append(f"post-edge window {width:.1f} eV wide: fitted by a "
                     f"{['constant (flat)', 'line', 'quadratic'][new_order]} instead of post_order {order}")
    windows = {}
    for name in ("edge", "white_line"):
        lo, hi = (e0 + v for v in getattr(ranges, name))
        c_lo, c_hi = max(lo, lo_e), min(hi, hi_e)
        windows[name] = (c_lo - e0, c_hi - e0)
    fitted = EdgeRanges(e0=e0, pre=(pre_lo - e0, pre_hi - e0), post=(post_lo - e0, post_hi - e0),
                        edge=windows["edge"], white_line=windows["white_line"], post_order=new_order,
                        flatten=ranges.flatten, white_line_half_width=ranges.white_line_half_width)
    return fitted, notes


def linear_combination_fit(
    spectra: np.ndarray, references: np.ndarray, *, nonnegative: bool = True,
    sum_to_one: bool = False, fit_mask: np.ndarray | None = None,
) -> LCFResult:
    """Least-squares weights of ``references`` ``(E, K)`` for ``spectra`` ``(E, ...)``.

    ``nonnegative``: weights >= 0 (exact NNLS by enumerating the 2^K supports, for K <= 8);
    ``sum_to_one``: weights sum to 1. ``fit_mask`` ``(E,)`` bool restricts the fit to some
    energies (e.g. an LCF window). NaN spectra give NaN weights.
    """
    refs = np.asarray(references, float)
    y = np.asarray(spectra)
    y = y.astype(np.result_type(y.dtype, np.float32), copy=False)
    if refs.ndim != 2 or refs.shape[0] != y.shape[0]:
        raise ValueError(f"references must be (E, K) with E = {y.shape[0]}, got {refs.shape}")
    n_e, k = refs.shape
    if k > 8 and nonnegative:
        raise ValueError(f"exact NNLS enumerates supports; {k} end-members are too many (<= 8)")
    rest = y.shape[1:]
    y = y.reshape(n_e, -1)
    if fit_mask is not None:
        fit_mask = np.asarray(fit_mask, bool)
        refs, y = refs[fit_mask], y[fit_mask]
    refs = refs.astype(y.dtype)
    bad = ~np.isfinite(y).all(0)
    y = np.where(bad[None], 0.0, y)
    n = y.shape[1]
    yy = (y * y).sum(0)
    aty = refs.T @ y  # (K, N): everything below works on K x N numbers
    gram = refs.T @ refs
    supports = [s for r in range(1, k + 1) for s in itertools.combinations(range(k), r)]
    if not nonnegative:
        supports = [tuple(range(k))]
    best_w = np.full((k, n), np.nan)
    best_r = np.full(n, np.inf)
    if nonnegative and not sum_to_one:  # the empty support (all weights zero) is feasible
        best_w[:] = 0.0
        best_r = yy.copy()
    for sup in supports:
        sup_l = list(sup)
        g = gram[np.ix_(sup_l, sup_l)]
        gram_inv = np.linalg.pinv(g)
        w = gram_inv @ aty[sup_l]  # (s, N)
        if sum_to_one:
            ones = np.ones(len(sup))
            g1 = gram_inv @ ones
            w = w - np.outer(g1, (ones @ w - 1.0) / (ones @ g1))
        r = np.maximum(yy - 2 * (w * aty[sup_l]).sum(0) + (w * (g @ w)).sum(0), 0.0)
        feasible = np.all(w >= -1e-12, 0) if nonnegative else np.ones(n, bool)
        better = feasible & (r < best_r)
        if better.any():
            full = np.zeros((k, better.sum()))
            full[sup_l] = np.maximum(w[:, better], 0.0) if nonnegative else w[:, better]
            best_w[:, better] = full
            best_r[better] = r[better]
    best_w[:, bad] = np.nan
    rms = np.sqrt(best_r / max(y.shape[0], 1))
    rms[bad] = np.nan
    return LCFResult(best_w.reshape(k, *rest), rms.reshape(rest))
