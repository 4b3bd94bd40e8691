"""Chemical-state maps of a spectral stack, per-particle statistics and their files.

:func:`analyze_stack` runs the edge analysis of :mod:`src.xanes.edge` on every voxel of a
stack ``(E, z, y, x)`` or ``(E, y, x)`` (restricted to a mask, e.g. the NMC phase of a
segmentation), in chunks of voxels, each chunk fully vectorised. Maps (float32, NaN outside
the mask or where the edge jump is too small):

``jump``, ``valid`` (uint8), ``edge_energy`` (half jump, eV), ``edge_energy_slope`` (steepest
slope, eV), ``white_line`` (eV), ``weight_<end-member>``, ``lcf_residual``, and with two
end-members ``soc`` (fraction of the second, charged one), ``oxidation_state`` and
``edge_energy_lcf`` (the half-jump energy of the fitted mixture).

:func:`particle_statistics` gives per particle (watershed of the mask,
:func:`src.analysis.particles.separate_particles`) the mean, spread and a radial core–shell
profile (shells of normalised depth below the particle surface, 0 = surface); :func:`write_outputs`
writes maps (TIFF), ``particles.csv``, ``radial_profile.csv``, ``summary.json`` and PNG figures.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from src.data.io import to_jsonable, write_json, write_tiff
from src.xanes.edge import (
    MIN_RELATIVE_JUMP,
    EdgeRanges,
    EdgeShape,
    edge_shape,
    find_e0,
    fit_ranges_to_scan,
    half_jump_energy,
    half_jump_energy_fit,
    interpolate_references,
    linear_combination_fit,
    mixture_edge_lookup,
    normalize_spectra,
    smooth_spectra,
    steepest_slope_energy,
    white_line_energy,
    window_rows,
)

__all__ = ["XanesAnalysisConfig", "XanesResult", "analyze", "analyze_stack", "mask_edge_shape", "mean_spectrum",
           "particle_statistics", "resolve_ranges", "soc_saturation", "write_outputs"]

MAP_UNITS = {"jump": "input units", "valid": "1 = enough edge jump", "edge_energy": "eV (half jump)",
             "edge_energy_slope": "eV (steepest slope)", "white_line": "eV", "lcf_residual": "rms, normalised",
             "soc": "fraction of the charged end-member (0-1)", "oxidation_state": "Ni valence",
             "edge_energy_lcf": "eV (half jump of the fitted mixture)"}


@dataclass
class XanesAnalysisConfig:
    """Settings of the per-voxel analysis.

    ``shared_shape``: normalise with the pre-edge slope and post-edge shape of the mean spectrum
    of the mask (:func:`~src.xanes.edge.edge_shape`; one fitted parameter per line, less
    noise) instead of per-voxel lines; ``edge_method``: ``"fit"`` (local cubic,
    :func:`~src.xanes.edge.half_jump_energy_fit`, with ``fit_half_width`` / ``fit_degree`` /
    ``coarse_smooth`` in eV) or ``"crossing"`` (first crossing after smoothing,
    :func:`~src.xanes.edge.half_jump_energy`); ``smooth_points``: Savitzky–Golay window
    (samples) along energy before the crossing and the slope search (0 = off); ``min_jump``:
    absolute minimum edge jump; ``min_jump_snr``: minimum jump / pre-edge rms noise;
    ``min_relative_jump``: minimum jump / the spectrum's rms magnitude (the scale-aware "is there
    an edge at all" rule, :data:`~src.xanes.edge.MIN_RELATIVE_JUMP`; it also holds for
    noiseless data, where the noise estimate is zero). A voxel is valid only when it passes all
    three; invalid voxels get NaN edge, white-line, weights, oxidation state and SOC;
    ``nonnegative``/``sum_to_one``: LCF constraints; ``lcf_range``: energies (eV about ``e0``) of
    the linear-combination fit (Athena's default, -20..+30 eV: near the edge, where the
    normalisation of data and end-members agree best);
    ``oxidation_states``: valence of each end-member; ``chunk_voxels``: voxels per batch;
    ``workers``: threads working on batches at once (None: one per CPU core);
    ``fit_to_scan``: place the pre/post-edge, edge and white-line windows inside the measured
    energies (:func:`~src.xanes.edge.fit_ranges_to_scan`); ``ranges.e0 = None``: the edge energy
    is found from the data (:func:`~src.xanes.edge.find_e0` of the mean spectrum of the mask).
    """

    ranges: EdgeRanges = field(default_factory=EdgeRanges)
    shared_shape: bool = True
    edge_method: str = "fit"
    fit_half_width: float = 4.5
    fit_degree: int = 3
    coarse_smooth: float = 6.0
    smooth_points: int = 11
    min_jump: float = 0.0
    min_jump_snr: float = 3.0
    min_relative_jump: float = MIN_RELATIVE_JUMP
    nonnegative: bool = True
    sum_to_one: bool = False
    oxidation_states: tuple[float, ...] = (2.0, 3.0)
    chunk_voxels: int = 1 << 16
    workers: int | None = None
    fit_to_scan: bool = True
    lcf_range: tuple[float, float] = (-20.0, 30.0)

    def __post_init__(self) -> None:
        self.lcf_range = tuple(float(v) for v in self.lcf_range)
        if not self.lcf_range[0] < self.lcf_range[1]:
            raise ValueError(f"lcf_range must be [lo, hi] (eV about e0) with lo < hi, got {list(self.lcf_range)}")
        if self.edge_method not in ("fit", "crossing"):
            raise ValueError(f"edge_method must be 'fit' or 'crossing', got {self.edge_method!r}")

    def half_jump(self, energies: np.ndarray, norm: np.ndarray, smoothed: np.ndarray | None = None) -> np.ndarray:
        """Half-jump energy (eV) of normalised spectra ``(E, ...)`` by ``edge_method``.

        ``smoothed``: the already smoothed spectra (``crossing`` only).
        """
        window = self.ranges.absolute("edge")
        if self.edge_method == "fit":
            return half_jump_energy_fit(energies, norm, window, half_width=self.fit_half_width,
                                        degree=self.fit_degree, coarse_smooth=self.coarse_smooth)
        if smoothed is not None:
            return half_jump_energy(energies, smoothed, window)
        return half_jump_energy(energies, norm, window, smooth_points=self.smooth_points)


def mask_edge_shape(
    energies: np.ndarray, flat: np.ndarray, idx: np.ndarray, ranges: EdgeRanges
) -> EdgeShape | None:
    """The shared :class:`EdgeShape` of ``analyze_stack``.

    From the mean spectrum of (at most ~2^17 evenly strided) voxels ``idx`` of ``flat`` ``(E, N)``.
    """
    if idx.size == 0:
        return None
    return edge_shape(energies, flat[:, idx[:: max(1, idx.size >> 17)]], ranges)


def mean_spectrum(energies: np.ndarray, flat: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Mean spectrum ``(E,)`` of the voxels ``idx`` of ``flat`` ``(E, N)`` that hold an edge step.

    At most ~2^17 voxels, evenly strided. A voxel holds an edge step when its mean over the upper
    quarter of the energies exceeds the one over the lower quarter (all of them when none does).
    """
    if idx.size == 0:
        raise ValueError("the mask holds no voxel: no mean spectrum")
    sub = np.asarray(flat[:, idx[:: max(1, idx.size >> 17)]], np.float64)
    q = max(1, energies.size // 4)
    rising = np.isfinite(sub).all(0) & (sub[-q:].mean(0) > sub[:q].mean(0))
    return (sub[:, rising] if rising.any() else sub).mean(1)


def resolve_ranges(
    energies: np.ndarray, flat: np.ndarray, idx: np.ndarray, cfg: XanesAnalysisConfig,
) -> tuple[EdgeRanges, list[str]]:
    """The ranges the analysis uses. Returns ``(ranges, notes)``.

    ``e0`` from the data when ``cfg.ranges.e0`` is None (the maximum derivative of the smoothed mean
    spectrum of the mask's voxels with an edge step), and with ``cfg.fit_to_scan`` the windows
    placed inside the scan.
    """
    ranges, notes = cfg.ranges, []
    e0 = ranges.e0
    if e0 is None:
        e0 = find_e0(energies, mean_spectrum(energies, flat, idx))
        notes.append(f"e0 = {e0:.2f} eV found from the data (maximum derivative of the smoothed mean "
                     "spectrum of the mask)")
    if cfg.fit_to_scan:
        ranges, moved = fit_ranges_to_scan(energies, ranges, e0)
        notes += moved
    elif ranges.e0 is None:
        ranges = EdgeRanges(**{**ranges.__dict__, "e0": e0})
    return ranges, notes


@dataclass
class XanesResult:
    """What :func:`analyze` found.

    ``maps`` (see the module doc), the ``ranges`` used (``e0`` resolved, windows inside the scan),
    ``notes`` (how they were placed), the end-member ``basis`` ``(E, K)`` normalised at the scan
    energies (None without end-members) and their ``names``.
    """

    maps: dict[str, np.ndarray]
    ranges: EdgeRanges
    notes: list[str]
    basis: np.ndarray | None = None
    names: list[str] | None = None


def _mixture_lookup(energies: np.ndarray, basis: np.ndarray, cfg: XanesAnalysisConfig,
                    n: int = 201) -> tuple[np.ndarray, np.ndarray]:
    """Half-jump energy of the mixtures of two normalised end-members at the scan energies."""
    frac = np.linspace(0.0, 1.0, n)
    ok = np.isfinite(basis).all(1)
    mix = np.nan_to_num(basis) @ np.stack([1 - frac, frac])
    edge = half_jump_energy_fit(energies[ok], mix[ok], cfg.ranges.absolute("edge"),
                                half_width=cfg.fit_half_width, degree=cfg.fit_degree,
                                coarse_smooth=cfg.coarse_smooth)
    good = np.isfinite(edge)
    return frac[good], edge[good]


def soc_saturation(soc: np.ndarray, threshold: float = 0.05, tol: float = 1e-3) -> dict[str, Any]:
    """Share of the finite SOC values at 0 (``<= tol``) and at 1 (``>= 1 - tol``).

    ``saturated`` when either exceeds ``threshold`` (the end-members do not span the electrode's
    states).
    """
    v = np.asarray(soc, float)
    v = v[np.isfinite(v)]
    at0 = float((v <= tol).mean()) if v.size else float("nan")
    at1 = float((v >= 1 - tol).mean()) if v.size else float("nan")
    return {"fraction_at_0": at0, "fraction_at_1": at1, "threshold": threshold,
            "saturated": bool(v.size and (at0 > threshold or at1 > threshold))}


def analyze_stack(
    energies: np.ndarray, stack: np.ndarray, mask: np.ndarray | None = None,
    references: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    reference_names: Sequence[str] | None = None, cfg: XanesAnalysisConfig | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Maps (see the module doc) of ``stack`` ``(E, *spatial)``.

    ``mask``: ``spatial`` bool (:func:`analyze`'s maps).
    """
    return analyze(energies, stack, mask, references, reference_names, cfg, progress).maps


def analyze(
    energies: np.ndarray, stack: np.ndarray, mask: np.ndarray | None = None,
    references: Sequence[tuple[np.ndarray, np.ndarray]] | None = None,
    reference_names: Sequence[str] | None = None, cfg: XanesAnalysisConfig | None = None,
    progress: bool = False, basis: np.ndarray | None = None,
) -> XanesResult:
    """The per-voxel analysis of ``stack`` ``(E, *spatial)`` inside ``mask`` (``spatial`` bool).

    Args:
        energies: ``(E,)`` eV, strictly increasing.
        stack: ``(E, *spatial)`` absorption (e.g. ``(E, z, y, x)``, ``(E, N)`` point spectra).
        mask: voxels to analyse; None: all.
        references: end-members ``[(energies_eV, mu), ...]`` (any number, <= 8), interpolated on
            their overlap with the scan and normalised like the data.
        reference_names: one name per end-member (``weight_<name>`` maps).
        cfg: the analysis settings (``ranges.e0 = None``: found from the data).
        progress: a tqdm bar over the voxel chunks.
        basis: instead of ``references``, end-members already normalised at ``energies``,
            ``(E, K)`` (e.g. :func:`src.xanes.end_members.end_members_from_data`).

    Returns:
        The :class:`XanesResult`. SOC: with two end-members the fraction of the second (charged)
        one; with more, the oxidation state scaled to 0..1 between the lowest and the highest
        ``oxidation_states``.
    """
    cfg = cfg or XanesAnalysisConfig()
    energies = np.asarray(energies, float)
    if energies.ndim != 1 or energies.size < 3:
        raise ValueError(f"energies must be a list of >= 3 values, got shape {energies.shape}")
    if np.any(np.diff(energies) <= 0):
        raise ValueError(f"energies must be strictly increasing (eV), got {np.round(energies[:8], 2).tolist()}...")
    spatial = stack.shape[1:]
    if stack.shape[0] != energies.size:
        raise ValueError(f"stack has {stack.shape[0]} energies (shape {stack.shape}), the energy list "
                         f"{energies.size}")
    if mask is None:
        mask = np.ones(spatial, bool)
    mask = np.asarray(mask, bool)
    if mask.shape != spatial:
        raise ValueError(f"mask shape {mask.shape} differs from the stack's spatial shape {spatial}")
    idx = np.flatnonzero(mask.ravel())
    flat = stack.reshape(energies.size, -1)
    ranges, notes = resolve_ranges(energies, flat, idx, cfg)
    cfg = XanesAnalysisConfig(**{**cfg.__dict__, "ranges": ranges})
    refs = names = lookup = None
    n_members = 0
    if references:
        refs = interpolate_references(energies, references, cfg.ranges)
        n_members = len(references)
        lo, hi = cfg.ranges.absolute("edge")
        for k, (e_ref, _) in enumerate(references):
            if e_ref[0] > lo or e_ref[-1] < hi:
                notes.append(f"end-member {k} spans {e_ref[0]:.1f}-{e_ref[-1]:.1f} eV, which misses part "
                             f"of the edge window {lo:.1f}-{hi:.1f} eV: its fit is less certain")
        if n_members == 2:
            try:
                lookup = mixture_edge_lookup(energies, references, cfg.ranges)
            except ValueError as err:  # the references' overlap misses a window
                notes.append(f"no LCF edge lookup: {err}")
    elif basis is not None:
        refs = np.asarray(basis, float)
        if refs.ndim != 2 or refs.shape[0] != energies.size:
            raise ValueError(f"basis must be (E, K) with E = {energies.size}, got {refs.shape}")
        n_members = refs.shape[1]
        if n_members == 2:
            lookup = _mixture_lookup(energies, refs, cfg)
    if refs is not None:
        names = list(reference_names or [f"ref{i}" for i in range(n_members)])
        if len(names) != n_members:
            raise ValueError(f"{n_members} end-members but reference_names {names}")
        ox = tuple(cfg.oxidation_states)
        if len(ox) != n_members:
            raise ValueError(f"{n_members} end-members but analysis.oxidation_states {list(ox)}: give "
                             "one valence per end-member")
    fit_rows = None
    if refs is not None:  # the LCF range (about e0) where the end-members overlap the scan
        lo, hi = (cfg.ranges.e0 + float(v) for v in cfg.lcf_range)
        fit_rows = np.isfinite(refs).all(1) & (energies >= lo) & (energies <= hi)
    if fit_rows is not None and fit_rows.sum() < 3:
        raise ValueError("the end-members overlap the scan at fewer than 3 energies")
    refs_fit = None if refs is None else np.nan_to_num(refs)
    shape = mask_edge_shape(energies, flat, idx, cfg.ranges) if cfg.shared_shape else None
    keys = ["jump", "valid", "edge_energy", "edge_energy_slope", "white_line"]
    if refs is not None:
        keys += [f"weight_{n}" for n in names] + ["lcf_residual", "oxidation_state", "soc"]
        if lookup is not None:
            keys += ["edge_energy_lcf"]
    values = {k: np.full(idx.size, np.nan, np.float32) for k in keys}
    edge_win, wl_win = cfg.ranges.absolute("edge"), cfg.ranges.absolute("white_line")
    # the half jump and the slope only need the edge window (+ the smoothing half-width)
    rows = window_rows(energies, edge_win, margin=1 + cfg.smooth_points // 2)
    e_rows = energies[rows]
    contiguous = idx.size == 0 or idx[-1] - idx[0] == idx.size - 1
    ox_arr = np.asarray(cfg.oxidation_states, float)
    ox_span = float(ox_arr.max() - ox_arr.min()) if ox_arr.size else 0.0

    def fit_chunk(start: int) -> None:
        sl = slice(start, start + cfg.chunk_voxels)
        cols = slice(idx[sl][0], idx[sl][-1] + 1) if contiguous else idx[sl]  # a view when possible
        y = np.asarray(flat[:, cols], np.float32)
        n = normalize_spectra(energies, y, cfg.ranges, shape, cfg.min_relative_jump)
        valid = n.significant & (n.jump > cfg.min_jump) & (n.jump > cfg.min_jump_snr * n.pre_noise)
        norm = np.nan_to_num(n.norm)
        smooth = smooth_spectra(e_rows, norm[rows], cfg.smooth_points)
        values["jump"][sl] = n.jump
        values["valid"][sl] = valid
        edge = (cfg.half_jump(energies, norm) if cfg.edge_method == "fit"
                else cfg.half_jump(e_rows, norm[rows], smooth))
        for key, est in (("edge_energy", edge),
                         ("edge_energy_slope", steepest_slope_energy(e_rows, smooth, edge_win)),
                         ("white_line", white_line_energy(energies, norm, wl_win,
                                                          cfg.ranges.white_line_half_width))):
            values[key][sl] = np.where(valid, est, np.nan)
        if refs is None:
            return
        fit = linear_combination_fit(np.where(valid[None], norm, np.nan), refs_fit,
                                     nonnegative=cfg.nonnegative, sum_to_one=cfg.sum_to_one,
                                     fit_mask=fit_rows)
        total = fit.weights.sum(0)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = fit.weights / np.where(total > 0, total, np.nan)
        for i, name in enumerate(names):
            values[f"weight_{name}"][sl] = fit.weights[i]
        values["lcf_residual"][sl] = fit.residual
        ox = ox_arr @ frac
        values["oxidation_state"][sl] = ox
        if n_members == 2:
            f = frac[1]
        elif ox_span > 0:
            f = (ox - ox_arr.min()) / ox_span
        else:
            f = np.full(frac.shape[1], np.nan)
        values["soc"][sl] = f
        if lookup is not None:
            edge = np.interp(np.clip(np.nan_to_num(f), 0, 1), *lookup)
            values["edge_energy_lcf"][sl] = np.where(np.isfinite(f), edge, np.nan)

    starts = list(range(0, idx.size, cfg.chunk_voxels))
    workers = max(1, min(cfg.workers or os.cpu_count() or 1, len(starts)))
    with ThreadPoolExecutor(workers) as pool:  # numpy releases the GIL: chunks run in parallel
        for _ in tqdm(pool.map(fit_chunk, starts), total=len(starts), desc="XANES fit",
                      disable=not progress, leave=False):
            pass
    maps = {}
    for k, v in values.items():
        full = np.full(int(np.prod(spatial)), np.nan, np.float32)
        full[idx] = v
        maps[k] = full.reshape(spatial)
    maps["valid"] = np.nan_to_num(maps["valid"]).astype(np.uint8)
    return XanesResult(maps, cfg.ranges, notes, refs, names)


def _depth_shells(particles: np.ndarray, n_shells: int) -> np.ndarray:
    """Shell index per voxel (0 = surface … n_shells - 1 = core), -1 outside particles."""
    try:
        import edt

        depth = edt.edt(particles, black_border=False).astype(np.float32)
    except ImportError:  # pragma: no cover - edt comes with porespy
        depth = ndimage.distance_transform_edt(particles > 0).astype(np.float32)
    n = int(particles.max())
    dmax = np.zeros(n + 1, np.float32)
    if n:
        dmax[1:] = ndimage.maximum(depth, particles, np.arange(1, n + 1))
    rel = (depth - 0.5) / np.maximum(dmax[particles] - 0.5, 0.5)
    shell = np.minimum((np.clip(rel, 0, 1) * n_shells).astype(np.int64), n_shells - 1)
    return np.where(particles > 0, shell, -1)


def particle_statistics(
    maps: dict[str, np.ndarray], particles: np.ndarray,
    quantities: Sequence[str] = ("edge_energy", "edge_energy_lcf", "white_line", "soc"),
    n_shells: int = 4, min_voxels: int = 8,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per-particle rows and the radial profile (all particles pooled) of ``quantities``.

    Row per particle with >= ``min_voxels`` valid voxels: ``particle``, ``voxels``, centroid,
    ``<q>_mean``, ``<q>_std``, ``<q>_median`` and ``<q>_shell<k>`` (mean in shell k,
    0 = surface) plus ``<q>_core_minus_shell``. Vectorised with bincounts.
    """
    quantities = [q for q in quantities if q in maps]
    n = int(particles.max())
    shells = _depth_shells(particles, n_shells)
    ids = particles.ravel().astype(np.int64)
    sh = shells.ravel()
    inside = ids > 0
    coords = np.indices(particles.shape).reshape(particles.ndim, -1)
    base = np.bincount(ids[inside], minlength=n + 1).astype(float)
    centroid = [np.bincount(ids[inside], c[inside], n + 1) / np.maximum(base, 1) for c in coords]
    stats: dict[str, np.ndarray] = {}
    profile: list[dict[str, Any]] = [{"shell": k, "depth_from": k / n_shells, "depth_to": (k + 1) / n_shells}
                                     for k in range(n_shells)]
    count = np.zeros(n + 1)
    for q in quantities:
        v = maps[q].ravel().astype(float)
        ok = inside & np.isfinite(v)
        count = np.bincount(ids[ok], minlength=n + 1).astype(float)
        s1 = np.bincount(ids[ok], v[ok], n + 1)
        s2 = np.bincount(ids[ok], v[ok] ** 2, n + 1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = s1 / count
            stats[f"{q}_mean"] = mean
            stats[f"{q}_std"] = np.sqrt(np.maximum(s2 / count - mean ** 2, 0))
        order = np.lexsort((v[ok], ids[ok]))
        sorted_ids, sorted_v = ids[ok][order], v[ok][order]
        first = np.searchsorted(sorted_ids, np.arange(n + 1))
        med = np.full(n + 1, np.nan)
        has = count > 0
        lo = first[has] + (count[has].astype(int) - 1) // 2
        hi = first[has] + count[has].astype(int) // 2
        med[has] = 0.5 * (sorted_v[lo] + sorted_v[hi])
        stats[f"{q}_median"] = med
        key = ids[ok] * n_shells + sh[ok]
        sc = np.bincount(key, minlength=(n + 1) * n_shells).reshape(n + 1, n_shells)
        ss = np.bincount(key, v[ok], (n + 1) * n_shells).reshape(n + 1, n_shells)
        with np.errstate(invalid="ignore", divide="ignore"):
            for k in range(n_shells):
                stats[f"{q}_shell{k}"] = ss[:, k] / sc[:, k]
            stats[f"{q}_core_minus_shell"] = ss[:, -1] / sc[:, -1] - ss[:, 0] / sc[:, 0]
        for k in range(n_shells):
            sel = ok & (sh == k)
            profile[k][f"{q}_mean"] = float(v[sel].mean()) if sel.any() else math.nan
            profile[k][f"{q}_std"] = float(v[sel].std()) if sel.any() else math.nan
            profile[k]["voxels"] = int(sel.sum())
    rows = []
    for i in range(1, n + 1):
        if count[i] < min_voxels:
            continue
        row: dict[str, Any] = {"particle": i, "voxels": int(base[i]), "valid_voxels": int(count[i])}
        row |= {f"centroid_{a}": float(c[i]) for a, c in zip("zyx"[-particles.ndim:], centroid, strict=True)}
        row |= {k: float(v[i]) for k, v in stats.items()}
        rows.append(row)
    return rows, profile


def _figures(out: Path, maps: dict[str, np.ndarray], rows: list[dict[str, Any]], mask: np.ndarray,
             truth: np.ndarray | None = None) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from src.data.io.figures import save_figure

    names = [k for k in ("edge_energy", "edge_energy_lcf", "white_line", "soc") if k in maps]
    mid = (lambda a: a[a.shape[0] // 2]) if mask.ndim == 3 else (lambda a: a)
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
    for ax, k in zip(axes[0], names, strict=True):
        img = mid(maps[k])
        finite = img[np.isfinite(img)]
        lo, hi = (np.percentile(finite, [2, 98]) if finite.size else (0, 1))
        im = ax.imshow(np.ma.masked_invalid(img), cmap="viridis" if k != "soc" else "coolwarm", vmin=lo, vmax=hi)
        ax.set_title(f"{k} ({MAP_UNITS.get(k, '').split(' (')[0]})", fontsize=9)
        ax.set_axis_off()
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    paths = [save_figure(fig, out / "maps.png")]
    hist = [k for k in ("edge_energy", "edge_energy_lcf", "white_line", "soc") if k in maps]
    fig, axes = plt.subplots(1, len(hist), figsize=(3.6 * len(hist), 3.0), squeeze=False)
    for ax, k in zip(axes[0], hist, strict=True):
        v = maps[k][np.isfinite(maps[k])]
        if v.size:
            lo, hi = np.percentile(v, [0.5, 99.5])
            ax.hist(v, bins=60, range=(lo, hi), color="steelblue", alpha=0.8, density=True, label="voxels")
            per = [r[f"{k}_mean"] for r in rows if f"{k}_mean" in r and np.isfinite(r[f"{k}_mean"])]
            if per:
                ax.hist(per, bins=30, range=(lo, hi), histtype="step", color="crimson", density=True,
                        label="particle means")
            if truth is not None and k == "edge_energy":
                t = truth[np.isfinite(truth) & np.isfinite(maps[k])]
                ax.hist(t, bins=60, range=(lo, hi), histtype="step", color="k", density=True, label="truth")
        ax.set_xlabel(k)
        ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(save_figure(fig, out / "histograms.png"))
    return paths


def write_outputs(
    output_dir: str | Path, maps: dict[str, np.ndarray], rows: list[dict[str, Any]],
    profile: list[dict[str, Any]], summary: dict[str, Any], mask: np.ndarray, figures: bool = True,
    table_name: str = "particles.csv",
) -> dict[str, Path]:
    """Write the maps, tables, summary and figures; every file atomically.

    Writes ``maps/<name>.tif``, ``particles.csv``, ``radial_profile.csv``, ``summary.json`` and
    (``figures``) ``maps.png`` / ``histograms.png``. ``table_name``: the per-row table
    (``spectra.csv`` for point spectra).
    """
    from src.analysis.statistics_table import write_csv_atomic

    out = Path(output_dir)
    written: dict[str, Path] = {}
    for k, v in maps.items():
        if v.ndim < 2:  # point spectra: their values are the rows of the table
            continue
        written[f"map_{k}"] = out / "maps" / f"{k}.tif"
        write_tiff(written[f"map_{k}"], v)
    if rows:
        written[Path(table_name).stem] = out / table_name
        write_csv_atomic(written[Path(table_name).stem], rows,
                         first=("particle",) if "particle" in rows[0] else ("spectrum",))
    if profile:
        written["radial_profile"] = out / "radial_profile.csv"
        write_csv_atomic(written["radial_profile"], profile, first=("shell",))
    if figures:
        for p in _figures(out, maps, rows, mask):
            written[p.stem] = p
    written["summary"] = out / "summary.json"
    write_json(written["summary"], to_jsonable({**summary, "map_units": MAP_UNITS,
                                                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    return written
