"""3D morphology of a segmented electrode: all statistics per phase, in physical units.

``labels`` is a (z, y, x) integer volume, value ``i`` = phase ``class_names[i]`` (e.g.
``["NMC", "CBD", "pore"]``), voxels cubic with edge ``voxel_size_nm``. :func:`compute_statistics`
returns a nested dict (lengths µm, areas µm², specific areas µm⁻¹, fractions 0..1) with the
wall time of each statistic; :mod:`src.analysis.statistics_table` flattens it to
``<statistic>/<phase>`` columns. Building blocks: :mod:`~src.analysis.surfaces` (marching cubes,
interfaces), :mod:`~src.analysis.particles` (watershed, sizes, sphericity, cracks),
:mod:`~src.analysis.transport` (percolation, taufactor), porespy (local thickness).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from src.analysis.parallel import fork_map
from src.analysis.particles import measure_particles, separate_particles, weighted_quantiles
from src.analysis.surfaces import SURFACE_SIGMA, PhaseSurface, phase_surface
from src.analysis.transport import (
    AXIS_NAMES,
    percolating_fraction,
    tortuosity_factor,
    tortuosity_start,
)
from src.data.io import read_image
from src.data.io.labels import check_label_values

__all__ = ["check_labels", "check_voxel_size", "compute_statistics", "local_thickness",
           "particle_statistics", "remap_labels", "surface_statistics", "volume_fractions"]

log = logging.getLogger(__name__)

QUANTILES = (0.1, 0.5, 0.9)
#: volumes at least this large (voxels) have their phases meshed in parallel processes
PARALLEL_VOXELS = 100**3


def check_voxel_size(voxel_size_nm: float | Sequence[float]) -> float:
    """Voxel edge in nm as a positive float; three equal values are accepted, unequal ones not."""
    values = np.atleast_1d(np.asarray(voxel_size_nm, dtype=float))
    if values.size not in (1, 3) or not np.all(np.isfinite(values)) or np.any(values <= 0):
        raise ValueError(f"voxel_size_nm must be one positive number (nm), got {voxel_size_nm!r}")
    if values.size == 3 and not np.allclose(values, values[0], rtol=1e-6):
        raise ValueError(
            f"anisotropic voxel size {tuple(values)} nm (z, y, x): the statistics need cubic "
            "voxels; resample the volume to an isotropic grid first")
    return float(values[0])


def remap_labels(volume: np.ndarray, label_values: Sequence[int], source: str = "volume") -> np.ndarray:
    """Map stored values ``label_values[i]`` → index ``i`` (uint8), e.g. 0/85/170 → 0/1/2.

    Raises ValueError naming ``source`` and the unexpected values when others occur.
    """
    volume = np.asarray(volume)
    if not (np.issubdtype(volume.dtype, np.integer) or volume.dtype == bool):
        raise ValueError(f"{source}: labels must be integers, got dtype {volume.dtype}")
    values = np.asarray(label_values, dtype=np.int64)
    if len(set(values.tolist())) != values.size:
        raise ValueError(f"label_values must be distinct, got {list(label_values)}")
    present = np.unique(volume)
    unknown = np.setdiff1d(present, values)
    if unknown.size:
        raise ValueError(f"{source}: label values {unknown[:10].tolist()} are not in "
                         f"label_values {values.tolist()}")
    order = np.argsort(values)
    return order[np.searchsorted(values[order], volume)].astype(np.uint8)


def check_labels(labels: np.ndarray, class_names: Sequence[str], source: str = "labels") -> np.ndarray:
    """Validate a (z, y, x) label volume with values in [0, len(class_names)); return it as uint8."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"{source}: expected a 3D (z, y, x) label volume, got shape {labels.shape}")
    n = len(class_names)
    if np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool:  # the dtype error first
        if not 1 <= n <= 255 or len(set(class_names)) != n:
            raise ValueError(f"class_names must be 1..255 distinct names, got {list(class_names)}")
    check_label_values(labels, n, source, allow_float=False, class_names=list(class_names))
    return labels.astype(np.uint8, copy=False)


def volume_fractions(labels: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Exact volume fraction per phase: voxel count / total voxels."""
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    return {name: float(counts[i] / labels.size) for i, name in enumerate(class_names)}


def surface_statistics(
    labels: np.ndarray, class_names: Sequence[str], voxel_um: float, sigma: float = SURFACE_SIGMA,
    workers: int | None = None, on_done: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Surface area, specific surface area and pairwise interface areas (marching cubes).

    Returns ``surface_area_um2[p]``, ``specific_surface_area_um-1[p]`` (area / total volume),
    ``surface_to_volume_um-1[p]`` (area / phase volume; 3/r for a sphere),
    ``interface_area_um2["A-B"]`` (mean of the A- and B-side estimates) and
    ``surface_fraction[p][q]``: share of p's surface facing q (sums to ≈ 1 over q ≠ p; the
    remainder is unassigned mesh). The phases are meshed in parallel processes (``workers``,
    None: one per CPU core) on volumes of at least ``PARALLEL_VOXELS``; ``on_done`` is called
    after each phase (progress).
    """
    n = len(class_names)
    surfaces = fork_map(_phase_surface_task, [(labels, i, n, sigma) for i in range(n)],
                        parallel=labels.size >= PARALLEL_VOXELS, workers=workers, on_done=on_done)
    return surface_table(surfaces, np.bincount(labels.ravel(), minlength=n), class_names, voxel_um)


def _phase_surface_task(args: tuple[np.ndarray, int, int, float]) -> PhaseSurface:
    """:func:`phase_surface` of one phase (a picklable task of :func:`fork_map`)."""
    return phase_surface(*args)


def surface_table(
    surfaces: Sequence[PhaseSurface], counts: np.ndarray, class_names: Sequence[str], voxel_um: float
) -> dict[str, Any]:
    """The dict of :func:`surface_statistics` from each phase's :class:`PhaseSurface`.

    The surfaces are in voxel units; ``counts`` are the voxels per phase (e.g. summed over the
    slabs of a large volume).
    """
    n = len(class_names)
    total_um3 = float(np.sum(counts)) * voxel_um**3
    area = {name: s.area * voxel_um**2 for name, s in zip(class_names, surfaces, strict=True)}
    out: dict[str, Any] = {
        "surface_area_um2": area,
        "specific_surface_area_um-1": {k: v / total_um3 for k, v in area.items()},
        "surface_to_volume_um-1": {
            name: (area[name] / (counts[i] * voxel_um**3) if counts[i] else math.nan)
            for i, name in enumerate(class_names)},
        "interface_area_um2": {
            f"{class_names[i]}-{class_names[j]}":
                float(0.5 * (surfaces[i].to_phase[j] + surfaces[j].to_phase[i])) * voxel_um**2
            for i in range(n) for j in range(i + 1, n)},
        "surface_fraction": {
            class_names[i]: {class_names[j]: (float(surfaces[i].to_phase[j] / surfaces[i].area)
                                              if surfaces[i].area else math.nan)
                             for j in range(n) if j != i}
            for i in range(n)},
    }
    return out


def particle_statistics(
    mask: np.ndarray,
    voxel_um: float,
    *,
    closing_radius: int = 0,
    sigma: float = 0.0,
    min_distance: int = 3,
    h: float = 1.0,
    surface_sigma: float = SURFACE_SIGMA,
    exclude_border: bool = True,
    min_voxels: int = 27,
    on_step: Callable[[], Any] | None = None,
) -> dict[str, Any]:
    """Separate and measure the particles of one phase (bool mask, z, y, x).

    Size = equivalent-sphere diameter of the particle hull, (6V/π)^⅓ in µm; ``d10/d50/d90_um``
    are volume-weighted (share of particle volume in smaller particles), ``*_number_um``
    number-weighted. Distributions use particles of ≥ ``min_voxels`` voxels and, with
    ``exclude_border``, not touching the volume faces. Crack porosity = non-phase voxels in the
    hull / hull voxels (hull: closing with a ball of ``closing_radius`` + ``binary_fill_holes``);
    ``crack_porosity`` overall = Σ enclosed pore / Σ hull over all particles. ``on_step`` is
    called after the separation and after the measurement (progress).
    """
    regions, _ = separate_particles(mask, closing_radius=closing_radius, sigma=sigma,
                                    min_distance=min_distance, h=h)
    if on_step:
        on_step()
    table = measure_particles(regions, mask, surface_sigma=surface_sigma)
    if on_step:
        on_step()
    diameter_um = (6.0 * table.hull_voxels / np.pi) ** (1 / 3) * voxel_um
    used = table.hull_voxels >= min_voxels
    if exclude_border:
        used &= ~table.touches_border
    d, w = diameter_um[used], table.hull_voxels[used].astype(float)
    q = np.asarray(QUANTILES)
    vol_q = weighted_quantiles(d, w, q)
    num_q = np.quantile(d, q) if d.size else np.full(q.size, np.nan)
    hull_total = table.hull_voxels.sum()
    out: dict[str, Any] = {
        "particle_count": int(used.sum()),
        "particle_count_all": int(regions.max()),
        "particle_count_border": int(table.touches_border.sum()),
        "mean_diameter_um": float(d.mean()) if d.size else math.nan,
        "mean_sphericity": float(np.nanmean(table.sphericity[used])) if used.any() else math.nan,
        "crack_porosity": float(1 - table.solid_voxels.sum() / hull_total) if hull_total else math.nan,
        "particles": {
            "diameter_um": diameter_um.tolist(),
            "volume_um3": (table.hull_voxels * voxel_um**3).tolist(),
            "sphericity": table.sphericity.tolist(),
            "crack_porosity": table.crack_porosity.tolist(),
            "touches_border": table.touches_border.tolist(),
            "used_in_distribution": used.tolist(),
            "centroid_um": (table.centroid * voxel_um).tolist(),
        },
    }
    for qi, vq, nq in zip(QUANTILES, vol_q, num_q, strict=True):
        out[f"d{round(qi * 100)}_um"] = float(vq)
        out[f"d{round(qi * 100)}_number_um"] = float(nq)
    return out


def local_thickness(mask: np.ndarray, voxel_um: float, bins: int = 20) -> dict[str, Any]:
    """Local thickness of a phase (porespy ``local_thickness``, its default brute-force method ``"bf"``).

    Thickness = diameter of the largest ball containing the voxel and fitting in the phase
    (2 × porespy's radius), in µm. ``mean_um`` and ``d50_um`` are over the phase's voxels
    (volume-weighted); the histogram gives the volume fraction of the phase per bin.
    """
    import porespy

    if not mask.any():
        return {"mean_um": math.nan, "d50_um": math.nan, "hist_edges_um": [], "hist_fraction": []}
    radius = porespy.filters.local_thickness(mask, method="bf")
    values = 2.0 * radius[mask].astype(np.float64) * voxel_um
    hist, edges = np.histogram(values, bins=bins)
    return {
        "mean_um": float(values.mean()),
        "d50_um": float(np.median(values)),
        "hist_edges_um": edges.tolist(),
        "hist_fraction": (hist / values.size).tolist(),
    }


def _phase_index(class_names: Sequence[str], name: str, what: str) -> int:
    if name not in class_names:
        raise ValueError(f"{what}={name!r} is not one of class_names {list(class_names)}")
    return list(class_names).index(name)


def absent_phase_notes(
    fractions: Mapping[str, float], particle_phase: str | None, tortuosity_phases: Sequence[str],
    thickness_phases: Sequence[str],
) -> list[str]:
    """One message per statistic that a phase absent from the volume leaves undefined.

    Its values are then NaN or inf for that reason, said in the log and in ``stats.json``.
    """
    notes = []
    for name, fraction in fractions.items():
        if fraction > 0:
            continue
        undefined = ["surface area, surface-to-volume and interfaces", "connectivity"]
        if name == particle_phase:
            undefined.append("particle sizes, sphericity and crack porosity")
        if name in thickness_phases:
            undefined.append("local thickness")
        notes += [f"phase {name!r} is absent from the volume (0 voxels): its {what} is not defined"
                  for what in undefined]
    notes += [f"tortuosity of {name!r}: the phase is absent, tau is infinite" for name in tortuosity_phases]
    return notes


def compute_statistics(
    labels: np.ndarray,
    class_names: Sequence[str],
    voxel_size_nm: float | Sequence[float],
    *,
    particle_phase: str | None = "NMC",
    tortuosity: bool = True,
    axes: Sequence[int] = (0, 1, 2),
    device: str = "cpu",
    tortuosity_phases: Sequence[str] | str | None = "default",
    tortuosity_axes: Sequence[int] | None = None,
    tortuosity_solver: str = "auto",
    tortuosity_conv_crit: float = 1e-2,
    tortuosity_iter_limit: int = 10000,
    tortuosity_workers: int | None = None,
    surface_sigma: float = SURFACE_SIGMA,
    particles: Mapping[str, Any] | None = None,
    thickness_phases: Sequence[str] | str | None = ("pore",),
    thickness_bins: int = 20,
    plausible_particle_um: Sequence[float] = (0.05, 100.0),
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """All statistics of a label volume (z, y, x), values ``i`` = ``class_names[i]``.

    ``particles``: keyword arguments of :func:`particle_statistics` (``closing_radius``,
    ``sigma``, ``min_distance``, ``h``, ``exclude_border``, ``min_voxels``); ``particle_phase``
    None skips separation. ``tortuosity_phases``: phases, or unions of phases written
    ``"NMC+CBD"`` (the solid network), whose tortuosity is solved; ``"default"``: the pore
    phase (the class named ``pore``) and the union of the others (the solid network), or every
    phase when none is named ``pore``; ``"all"`` or None = every single phase; ``tortuosity_axes``: None = ``axes``; ``tortuosity_solver``: see
    :func:`~src.analysis.transport.tortuosity_factor`; ``tortuosity_workers``: processes solving
    phase-axis pairs at once (None: one per CPU core, at most one per pair). ``thickness_phases``:
    phases for local thickness (None/empty skips). Returns a dict with ``volume_fraction``,
    ``surfaces``, ``particles``, ``connectivity`` (percolating fraction per phase and axis),
    ``tortuosity`` (per phase and axis), ``local_thickness`` and ``timings_s``.
    """
    class_names = list(class_names)
    labels = check_labels(labels, class_names)
    voxel_nm = check_voxel_size(voxel_size_nm)
    voxel_um = voxel_nm * 1e-3
    axes = tuple(int(a) for a in axes)
    if not axes or any(a not in (0, 1, 2) for a in axes):
        raise ValueError(f"axes must be a non-empty subset of (0, 1, 2) (z, y, x), got {axes}")
    if isinstance(thickness_phases, str):
        thickness_phases = [thickness_phases]
    thickness_phases = list(thickness_phases or [])
    for name in thickness_phases:
        _phase_index(class_names, name, "thickness_phases")
    if particle_phase is not None:
        _phase_index(class_names, particle_phase, "particle_phase")
    pore = [n for n in class_names if n.lower() == "pore"]
    if tortuosity_phases == "default" and pore and len(class_names) > 1:
        tort_phases = [pore[0], "+".join(n for n in class_names if n != pore[0])]
    elif tortuosity_phases is None or tortuosity_phases in ("all", "default"):
        tort_phases = list(class_names)
    elif isinstance(tortuosity_phases, str):
        tort_phases = [tortuosity_phases]
    else:
        tort_phases = list(tortuosity_phases)
    tort_members = {name: [_phase_index(class_names, part.strip(), f"tortuosity_phases entry {name!r}: phase")
                           for part in str(name).split("+")] for name in tort_phases}
    tort_axes = axes if tortuosity_axes is None else tuple(int(a) for a in tortuosity_axes)
    if not tort_axes or any(a not in (0, 1, 2) for a in tort_axes):
        raise ValueError(f"tortuosity_axes must be a non-empty subset of (0, 1, 2), got {tort_axes}")

    timings: dict[str, float] = {}
    stats: dict[str, Any] = {"shape": list(labels.shape), "voxel_size_nm": voxel_nm,
                             "class_names": list(class_names)}

    def timed(key: str, fn: Callable[[Callable[..., Any]], Any], total: int = 1) -> Any:
        """Run ``fn(tick)`` under a progress bar of ``total`` steps (time left); log its time."""
        if progress:
            progress(key)
        start = time.perf_counter()
        with tqdm(total=total, desc=key, unit="step", leave=False, disable=None) as bar:
            result = fn(bar.update)
        timings[key] = time.perf_counter() - start
        log.info("%s: %.1f s", key, timings[key])
        return result

    stats["volume_fraction"] = timed("volume_fraction", lambda tick: volume_fractions(labels, class_names))
    stats["notes"] = absent_phase_notes(stats["volume_fraction"], particle_phase,
                                        [n for n in tort_members if all(
                                            stats["volume_fraction"][class_names[i]] == 0
                                            for i in tort_members[n])] if tortuosity else [],
                                        thickness_phases)
    for note in stats["notes"]:
        log.warning(note)
    # the tortuosity solves (the longest statistics) start first, in other processes when the
    # volume is large; the other statistics are computed here meanwhile, on the remaining core
    solving = None
    if tortuosity:
        tasks = [(name, a) for name in tort_members for a in tort_axes]
        masks = {name: np.isin(labels, members) for name, members in tort_members.items()}  # once per phase
        tort_start = time.perf_counter()
        tort_kwargs = {"solver": tortuosity_solver, "device": device, "conv_crit": tortuosity_conv_crit,
                       "iter_limit": tortuosity_iter_limit}
        # with c cores: the largest solves go to c - 1 background processes, one core stays here for
        # the other statistics, then the smallest solve (on 2 cores: the solid network in the
        # background; here the surfaces, particles, ... and then the pore)
        cores = tortuosity_workers or os.cpu_count() or 1
        order = sorted(range(len(tasks)), key=lambda k: -int(masks[tasks[k][0]].sum()))
        here = order[cores - 1:] if 1 < cores <= len(tasks) and device == "cpu" else []
        away = [k for k in range(len(tasks)) if k not in here]
        solving = tortuosity_start([(masks[tasks[k][0]], tasks[k][1]) for k in away],
                                   workers=max(1, cores - 1) if here else tortuosity_workers,
                                   background=bool(here), **tort_kwargs)
        local = [(masks[tasks[k][0]], tasks[k][1]) for k in here]
        del masks
    try:
        surface_workers = 1 if solving is not None and solving.background else None
        stats["surfaces"] = timed("surfaces", lambda tick: surface_statistics(
            labels, class_names, voxel_um, surface_sigma, workers=surface_workers, on_done=tick),
            total=len(class_names))
        if particle_phase is not None:
            mask = labels == _phase_index(class_names, particle_phase, "particle_phase")
            kwargs = {"surface_sigma": surface_sigma, **dict(particles or {})}
            stats["particles"] = {particle_phase: timed(
                "particles", lambda tick: particle_statistics(mask, voxel_um, on_step=tick, **kwargs), total=2)}

        def each_phase(tick: Callable[..., Any], fn: Callable[[str, int], Any], names: Sequence[str]) -> dict[str, Any]:
            out = {}
            for name in names:
                out[name] = fn(name, class_names.index(name))
                tick()
            return out

        stats["connectivity"] = timed("connectivity", lambda tick: each_phase(
            tick, lambda name, i: percolating_fraction(labels == i, axes), class_names), total=len(class_names))
        if thickness_phases:
            stats["local_thickness"] = timed("local_thickness", lambda tick: each_phase(
                tick, lambda name, i: local_thickness(labels == i, voxel_um, thickness_bins), thickness_phases),
                total=len(thickness_phases))
    except BaseException:
        if solving is not None:
            solving.cancel()
        raise
    if solving is not None:
        def finish(tick: Callable[..., Any]) -> list[dict[str, Any]]:
            results: dict[int, dict[str, Any]] = {}
            for k, (m, a) in zip(here, local, strict=True):
                results[k] = tortuosity_factor(m, a, **tort_kwargs)
                tick()
            results.update(zip(away, solving(tick), strict=True))
            return [results[k] for k in range(len(tasks))]

        solved = timed("tortuosity", finish, total=len(tasks))
        if solving.background:  # its time: from the start of the solves, overlapping the others
            timings["tortuosity"] = time.perf_counter() - tort_start
            log.info("tortuosity (overlapping the others): %.1f s", timings["tortuosity"])
        stats["tortuosity"] = {name: {} for name in tort_members}
        for (name, a), res in zip(tasks, solved, strict=True):
            stats["tortuosity"][name][AXIS_NAMES[a]] = res
    stats["timings_s"] = timings
    for note in size_plausibility_notes(stats, voxel_nm, plausible_particle_um):
        log.warning(note)
        stats["notes"].append(note)
    return stats


def size_plausibility_notes(stats: Mapping[str, Any], voxel_nm: float | Sequence[float],
                            particle_um: Sequence[float] = (0.05, 100.0)) -> list[str]:
    """Warnings for sizes that are legal but almost surely a unit mix-up (µm given as nm).

    Args:
        stats: :func:`compute_statistics`' result (its particle d50 is checked).
        voxel_nm: the voxel size used (nm).
        particle_um: the range of particle d50 (µm) expected for battery electrodes.

    Returns:
        One message per implausible value, saying what was assumed and the likely fix.
    """
    notes = []
    vox = np.atleast_1d(np.asarray(voxel_nm, float))
    lo, hi = float(particle_um[0]), float(particle_um[1])
    for phase, part in stats.get("particles", {}).items():
        d50 = part.get("d50_um", math.nan)
        if not math.isfinite(d50) or lo <= d50 <= hi:
            continue
        if d50 < lo:
            hint = (f"if the voxel size was given in µm, use voxel_size_nm={vox[0] * 1000:g}" if vox.max() < 1
                    else "check voxel_size_nm")
        else:
            hint = (f"if the voxel size was given in pm or Å, use voxel_size_nm={vox[0] / 1000:g}"
                    if vox.min() > 1000 else "check voxel_size_nm")
        notes.append(f"particle d50 of {phase} = {d50:.4g} µm with voxel_size_nm={vox.tolist()} is outside "
                     f"the {lo:g}-{hi:g} µm of electrode particles (statistics.plausible_particle_um): {hint}")
    return notes


def load_label_volume(
    path: Path, class_names: Sequence[str], label_values: Sequence[int] | None = None,
    source: str | None = None,
) -> np.ndarray:
    """Read a (z, y, x) label volume as phase indices (uint8); errors name ``source``/the file."""
    source = source or str(path)
    volume = read_image(path)  # memory-mapped where the format allows
    if volume.ndim != 3:
        raise ValueError(f"{source}: expected a 3D (z, y, x) label volume, got shape {volume.shape}")
    if label_values is not None:
        if len(label_values) != len(class_names):
            raise ValueError(f"label_values {list(label_values)} must give one value per class "
                             f"in {list(class_names)}")
        volume = remap_labels(volume, label_values, source=source)
    return check_labels(volume, class_names, source=source)
