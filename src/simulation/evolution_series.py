"""Evolution series of one synthetic electrode: the same particles at several states of charge.

State 0 is a synthetic microstructure (:func:`~src.simulation.microstructure.generate_microstructure`,
0 = NMC, 1 = CBD, 2 = pore) generated with a margin around the saved field of view, so that
particles cut by the faces keep their full shape. Its NMC particles are separated once
(:func:`~src.analysis.particles.separate_particles`, no closing: hull = NMC with its enclosed
cracks filled); these are the simulator's particles, with ids kept through the series. State
``k`` then applies, always relative to state 0 (no accumulated resampling error):

* **shrinkage** — every particle hull is scaled about its own centroid so that it keeps
  exactly ``(1 - shrink_percent/100) ** k`` of its state-0 volume (to one voxel): the
  configured percentage is of particle *volume* per step between consecutive states; the
  radius scales by the cube root, ``(1 - s) ** (k/3)`` (3 % volume ≈ 1.01 % radius);
* **crack growth** — crack porosity (crack voxels / particle hull voxels, over all particles)
  grows by ``crack_growth_percent`` percentage points per state: existing cracks widen first
  (lowest distance to a state-0 crack), then planar cracks start in intact particles; cracks
  grow only ``crack_margin_vox`` or deeper inside the state-0 hull, and no crack voxel is less
  than 2 voxels deep in its current hull, so every crack stays enclosed (state-0 cracks
  shallower than that are healed);
* **CBD detachment** — CBD voxels touching the state-0 particles (within ``detach_depth_vox``)
  become pore in smooth random patches, ``detach_percent`` of that contact layer per state
  (nested: what detached stays detached); shrinkage also opens gaps;
* optional **drift** — each state ``k ≥ 1`` is cropped at a random integer offset
  ``shift_vox`` (|component| ≤ ``drift_vox``): feature at ``p`` in state 0 sits at
  ``p - shift_vox`` in state ``k``, so ``phase_cross_correlation(state0, statek)`` returns
  ``+shift_vox``.

Each state is written as ``state_KK_label.tif`` (uint8), optionally ``state_KK_image.tif``
(:func:`~src.simulation.imaging.simulate_tomography`), and ``state_KK.json`` with its ground truth:
volume fractions, crack porosity, particle hull fraction, CBD coverage of the NMC surface
(voxel faces), per-particle hull/solid voxels and centroids by simulator id. ``manifest.csv``
and ``manifest.yaml`` (state, path, soc, voltage, time_h, voxel_size_nm) are written last.

CLI: ``python -m src.simulation.evolution_series --out data/evolution --states 4 --shrink-percent 3``
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from scipy import ndimage

from src.analysis.particles import distance_transform, separate_particles
from src.data.io import to_jsonable, write_text, write_tiff
from src.simulation.imaging import ImagingConfig, simulate_tomography
from src.simulation.microstructure import (
    PHASES,
    MicrostructureConfig,
    generate_microstructure,
    phase_fractions,
)

__all__ = ["EvolutionConfig", "EvolutionState", "cbd_coverage", "illustrative_voltage",
           "simulate_evolution", "write_evolution_series", "main"]

NMC, CBD, PORE = (PHASES.index(p) for p in ("NMC", "CBD", "pore"))


@dataclass
class EvolutionConfig:
    """Changes between consecutive states (percentages per step) and the series' metadata."""

    states: int = 4
    shrink_percent: float = 3.0  # particle hull VOLUME lost per step, % of the previous state
    crack_growth_percent: float = 1.0  # crack porosity added per step, percentage points of hull
    detach_percent: float = 15.0  # share of the state-0 NMC-CBD contact layer detached per step
    soc_start: float = 0.0
    soc_end: float = 1.0
    hours_per_state: float = 1.0
    drift_vox: int = 0  # max |shift| per axis of each state's field of view (integer voxels)
    margin_vox: int = 8  # generated around the field of view (particles cut by faces stay whole)
    crack_margin_vox: float = 2.0  # cracks stay at least this deep inside a particle hull
    crack_start_vox: tuple[float, float] = (2.0, 6.0)  # delay of new cracks in intact particles
    detach_depth_vox: float = 1.5  # CBD within this distance of a particle is "in contact"
    detach_patch_vox: float = 4.0  # correlation length of the detaching patches
    particle_min_distance: int = 3  # watershed seeds of the particle separation (voxels)

    def __post_init__(self) -> None:
        self.crack_start_vox = tuple(float(v) for v in self.crack_start_vox)  # type: ignore[assignment]
        if self.states < 1:
            raise ValueError(f"states must be >= 1, got {self.states}")
        if not 0 <= self.shrink_percent < 100:
            raise ValueError(f"shrink_percent must be in [0, 100), got {self.shrink_percent}")
        if self.crack_growth_percent < 0 or self.detach_percent < 0:
            raise ValueError("crack_growth_percent and detach_percent must be >= 0")
        if not (0 <= self.soc_start <= 1 and 0 <= self.soc_end <= 1):
            raise ValueError("soc_start and soc_end must be in [0, 1]")
        if self.drift_vox < 0 or self.margin_vox < 0:
            raise ValueError("drift_vox and margin_vox must be >= 0")

    def soc(self, k: int) -> float:
        """State of charge of state ``k`` (linear from ``soc_start`` to ``soc_end``)."""
        if self.states == 1:
            return float(self.soc_start)
        return float(self.soc_start + (self.soc_end - self.soc_start) * k / (self.states - 1))


@dataclass
class EvolutionState:
    """One state in the field of view: ground-truth labels, particle ids and crack mask.

    ``labels`` (z, y, x) uint8, the ground truth, the simulator's particle ids (z, y, x) int32
    (0 = none; hulls, cracks included) and the crack mask (z, y, x) bool.
    """

    labels: np.ndarray
    truth: dict[str, Any] = field(default_factory=dict)
    particle_ids: np.ndarray | None = None
    cracks: np.ndarray | None = None


def illustrative_voltage(soc: float) -> float:
    """A smooth NMC-like open-circuit voltage (V) for a state of charge in [0, 1] (illustrative)."""
    return float(3.45 + 0.75 * soc + 0.08 * np.tanh((soc - 0.1) / 0.05) - 0.02 * soc**2)


def cbd_coverage(labels: np.ndarray, a: int = NMC, b: int = CBD) -> float:
    """Share of phase ``a``'s voxel faces (inside the volume) that face phase ``b``.

    A voxel-face estimate of "fraction of the NMC surface covered by CBD" (the analysis uses
    marching cubes; both move the same way).
    """
    total = covered = 0
    for axis in range(labels.ndim):
        lo = np.take(labels, np.arange(labels.shape[axis] - 1), axis=axis)
        hi = np.take(labels, np.arange(1, labels.shape[axis]), axis=axis)
        for p, q in ((lo, hi), (hi, lo)):
            face = (p == a) & (q != a)
            total += int(np.count_nonzero(face))
            covered += int(np.count_nonzero(face & (q == b)))
    return covered / total if total else float("nan")


def _smooth_field(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return (field_ - field_.mean()) / (field_.std() + 1e-12)


def _crack_score(
    regions: np.ndarray, hull: np.ndarray, cracks: np.ndarray, cfg: EvolutionConfig,
    rng: np.random.Generator,
) -> np.ndarray:
    """Order in which hull voxels crack (low first, inf = never), in state-0 coordinates.

    0 on state-0 cracks; distance to them (voxels) inside cracked particles; in intact
    particles the distance to a random plane through the centroid plus a random start delay.
    Voxels less than ``crack_margin_vox`` deep in the hull never crack (cracks stay enclosed).
    """
    score = np.full(regions.shape, np.inf, np.float32)
    depth = distance_transform(hull)
    dist = ndimage.distance_transform_edt(~cracks).astype(np.float32) if cracks.any() else None
    for pid, box in enumerate(ndimage.find_objects(regions), start=1):
        if box is None:
            continue
        own = regions[box] == pid
        if dist is not None and (cracks[box] & own).any():
            local = dist[box]
        else:
            coords = np.argwhere(own).astype(np.float32)
            normal = rng.standard_normal(3)
            normal /= np.linalg.norm(normal)
            grids = np.ogrid[tuple(slice(0, s.stop - s.start) for s in box)]
            centre = coords.mean(axis=0)
            plane = sum((g - c) * np.float32(n) for g, c, n in zip(grids, centre, normal, strict=True))
            local = np.abs(plane).astype(np.float32) + np.float32(rng.uniform(*cfg.crack_start_vox))
        eligible = own & ((depth[box] >= cfg.crack_margin_vox + 1) | cracks[box])
        score[box] = np.where(eligible, local, score[box])
    score[cracks] = 0.0
    # tie-break (distances are often integers) without changing the order of distinct values
    score += rng.uniform(0, 0.01, score.shape).astype(np.float32)
    return score


def _signed_distance(own: np.ndarray) -> np.ndarray:
    """Signed distance (voxels, > 0 inside, boundary at ±0.5) of a small bool box, float32."""
    core = (slice(1, -1),) * own.ndim
    inside = ndimage.distance_transform_edt(np.pad(own, 1))[core]
    outside = ndimage.distance_transform_edt(np.pad(~own, 1, constant_values=True))[core]
    return np.where(own, inside - 0.5, 0.5 - outside).astype(np.float32)


def _scaled_particle(
    own: np.ndarray, phi: np.ndarray, scale: float, keep: int
) -> tuple[np.ndarray, np.ndarray]:
    """Particle ``own`` (bool box) scaled by ``scale`` about its centroid, exactly ``keep`` voxels.

    ``phi``: its :func:`_signed_distance`. Returns the new mask (inside ``own``) and, for every
    voxel of the box, the state-0 coordinates it maps back to (3, *box) — where the crack order
    is looked up.
    """
    centre = np.argwhere(own).mean(axis=0)
    grid = np.indices(own.shape, dtype=np.float32)
    source = centre[:, None, None, None] + (grid - centre[:, None, None, None]) / np.float32(scale)
    value = ndimage.map_coordinates(phi, source, order=1, mode="constant", cval=-1e3)
    cand = np.flatnonzero(own)
    keep = min(max(keep, 0), cand.size)
    mask = np.zeros(own.shape, bool)
    if keep:
        order = np.argsort(-value.ravel()[cand], kind="stable")
        mask.ravel()[cand[order[:keep]]] = True
    return mask, source


def simulate_evolution(
    micro: MicrostructureConfig, evo: EvolutionConfig, seed: int
) -> list[EvolutionState]:
    """The series of ``evo.states`` label volumes (z, y, x) = ``micro.shape`` and their truth."""
    rng = np.random.default_rng([seed, 7])
    pad = evo.margin_vox + evo.drift_vox
    base_shape = tuple(s + 2 * pad for s in micro.shape)
    labels0 = generate_microstructure(dataclasses.replace(micro, shape=base_shape), seed)
    nmc0 = labels0 == NMC
    regions, hull = separate_particles(nmc0, closing_radius=0, min_distance=evo.particle_min_distance)
    cracks0 = hull & ~nmc0
    n_particles = int(regions.max())
    score = _crack_score(regions, hull, cracks0, evo, rng)
    # CBD contact layer of the state-0 particles, detached in nested patches
    cbd0 = (labels0 == CBD) & ~hull  # CBD enclosed in a particle counts as its crack
    near = ndimage.distance_transform_edt(~hull) <= evo.detach_depth_vox
    contact = cbd0 & near
    patches = _smooth_field(base_shape, evo.detach_patch_vox, rng)
    contact_values = np.sort(patches[contact])
    boxes = ndimage.find_objects(regions)
    owns = [None if box is None else regions[box] == pid for pid, box in enumerate(boxes, start=1)]
    shapes = [None if own is None else (own, _signed_distance(own)) for own in owns]
    shifts = [np.zeros(3, int)] + [rng.integers(-evo.drift_vox, evo.drift_vox + 1, 3)
                                   for _ in range(evo.states - 1)]
    hull0_total = int(hull.sum())
    # a crack voxel needs depth >= 2 in its hull: its 6-neighbours are then hull voxels and
    # the cracks stay enclosed (voxels shallower than that are never crack, also in state 0)
    crack0 = float((cracks0 & (distance_transform(hull) >= 2)).sum() / hull0_total) if hull0_total else 0.0
    states = []
    for k in range(evo.states):
        volume_scale = (1.0 - evo.shrink_percent / 100.0) ** k
        new_hull = np.zeros(base_shape, bool)
        new_score = np.full(base_shape, np.inf, np.float32)
        ids = np.zeros(base_shape, np.int32)
        for pid, (box, shape) in enumerate(zip(boxes, shapes, strict=True), start=1):
            if box is None or shape is None:
                continue
            own, phi = shape
            mask, source = _scaled_particle(own, phi, volume_scale ** (1 / 3),
                                            round(own.sum() * volume_scale))
            looked_up = ndimage.map_coordinates(score[box], source, order=0, mode="nearest")
            new_hull[box] |= mask
            ids[box][mask] = pid
            new_score[box] = np.where(mask, looked_up, new_score[box])
        n_hull = int(new_hull.sum())
        crack_target = crack0 + k * evo.crack_growth_percent / 100.0
        deep = distance_transform(new_hull) >= 2
        eligible = np.flatnonzero(deep & np.isfinite(new_score))
        n_crack = min(round(crack_target * n_hull), eligible.size)
        cracks = np.zeros(base_shape, bool)
        if n_crack:
            pick = np.argpartition(new_score.ravel()[eligible], n_crack - 1)[:n_crack]
            cracks.ravel()[eligible[pick]] = True
        detach_fraction = min(k * evo.detach_percent / 100.0, 1.0)
        n_detach = round(detach_fraction * contact_values.size)
        detached = contact & (patches < contact_values[n_detach - 1]) if n_detach else \
            np.zeros(base_shape, bool)
        if n_detach:
            detached |= contact & (patches == contact_values[n_detach - 1])
        labels = np.full(base_shape, PORE, np.uint8)
        labels[cbd0 & ~detached & ~new_hull] = CBD
        labels[new_hull & ~cracks] = NMC
        lo = np.array([pad] * 3) + shifts[k]
        view = tuple(slice(int(a), int(a) + s) for a, s in zip(lo, micro.shape, strict=True))
        fov = np.ascontiguousarray(labels[view])
        hull_vox = np.bincount(ids.ravel(), minlength=n_particles + 1)[1:]
        solid_vox = np.bincount(ids[new_hull & ~cracks], minlength=n_particles + 1)[1:]
        present = np.flatnonzero(np.bincount(ids[view].ravel(), minlength=n_particles + 1)[1:]) + 1
        fov_ids = ids[view]
        centroids = ndimage.center_of_mass(np.ones(fov.shape, np.uint8), fov_ids, present)
        touches = np.zeros(n_particles + 1, bool)
        for axis in range(3):
            for end in (0, -1):
                touches[np.unique(np.take(fov_ids, end, axis=axis))] = True
        hull_fov = int(np.count_nonzero(fov_ids))
        soc = evo.soc(k)
        truth = {
            "state": k,
            "soc": soc,
            "voltage": illustrative_voltage(soc),
            "time_h": k * evo.hours_per_state,
            "shift_vox": [int(v) for v in shifts[k]],
            "volume_scale": volume_scale,
            "radius_scale": volume_scale ** (1 / 3),
            "shrink_percent_per_step": evo.shrink_percent,
            "volume_fraction": phase_fractions(fov),
            "particle_hull_fraction": hull_fov / fov.size,
            "crack_porosity": float(cracks.sum() / n_hull) if n_hull else float("nan"),
            "crack_porosity_target": crack_target,
            "cbd_detached_fraction": n_detach / contact_values.size if contact_values.size else 0.0,
            "cbd_coverage_of_nmc": cbd_coverage(fov),
            "particle_count": len(present),
            # simulator ids of the particles in the field of view; voxel counts of the whole
            # particle (also outside the field of view), centroid of its part in the view
            "particles": {
                "id": present.tolist(),
                "hull_voxels": hull_vox[present - 1].tolist(),
                "solid_voxels": solid_vox[present - 1].tolist(),
                "centroid_vox": [[round(c, 3) for c in cz] for cz in centroids],
                "touches_border": touches[present].tolist(),
            },
        }
        states.append(EvolutionState(fov, truth, np.ascontiguousarray(fov_ids),
                                     np.ascontiguousarray(cracks[view])))
    return states


def write_evolution_series(
    out_dir: str | os.PathLike[str],
    micro: MicrostructureConfig,
    evo: EvolutionConfig,
    seed: int,
    imaging: ImagingConfig | None = None,
) -> Path:
    """Simulate the series and write it to ``out_dir``; returns the path of ``manifest.csv``.

    Per state: ``state_KK_label.tif``, ``state_KK.json`` (ground truth) and, with ``imaging``,
    ``state_KK_image.tif`` (float32 grey values, seed ``seed + k``). The manifests come last,
    so a folder with ``manifest.csv`` holds a complete series.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    states = simulate_evolution(micro, evo, seed)
    rows = []
    for state in states:
        k = state.truth["state"]
        name = f"state_{k:02d}"
        write_tiff(out / f"{name}_label.tif", state.labels)
        row = {"name": name, "path": f"{name}_label.tif", "soc": state.truth["soc"],
               "voltage": round(state.truth["voltage"], 4), "time_h": state.truth["time_h"],
               "voxel_size_nm": micro.voxel_size_nm, "truth": f"{name}.json"}
        if imaging is not None:
            grey = simulate_tomography(state.labels, imaging, seed + k)
            write_tiff(out / f"{name}_image.tif", grey.astype(np.float32, copy=False))
            row["image"] = f"{name}_image.tif"
        meta = {"name": name, **state.truth, "voxel_size_nm": micro.voxel_size_nm,
                "shape": list(state.labels.shape), "classes": list(PHASES), "seed": int(seed),
                "parameters": {"evolution": to_jsonable(evo), "microstructure": to_jsonable(micro),
                               "imaging": to_jsonable(imaging)}}
        write_text(out / f"{name}.json", json.dumps(meta, indent=1) + "\n")
        rows.append(row)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "manifest.yaml", f"# evolution series, simulated in {time.perf_counter() - start:.1f} s\n"
                + yaml.safe_dump({"states": rows}, sort_keys=False))
    write_text(out / "manifest.csv", buffer.getvalue())
    return out / "manifest.csv"


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see the module docstring)."""
    p = argparse.ArgumentParser(description="Simulate an evolution series of a synthetic electrode.")
    p.add_argument("--out", type=Path, default=Path("data/evolution"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shape", type=int, nargs=3, default=[96, 96, 96], metavar=("Z", "Y", "X"))
    p.add_argument("--voxel-size-nm", type=float, default=MicrostructureConfig.voxel_size_nm)
    p.add_argument("--nmc-fraction", type=float, default=MicrostructureConfig.nmc_fraction)
    p.add_argument("--cbd-fraction", type=float, default=MicrostructureConfig.cbd_fraction)
    p.add_argument("--cracked-fraction", type=float, default=MicrostructureConfig.cracked_fraction)
    defaults = EvolutionConfig()
    p.add_argument("--states", type=int, default=defaults.states)
    p.add_argument("--shrink-percent", type=float, default=defaults.shrink_percent,
                   help="particle volume lost per step, %% of the previous state")
    p.add_argument("--crack-growth-percent", type=float, default=defaults.crack_growth_percent,
                   help="crack porosity added per step (percentage points of particle volume)")
    p.add_argument("--detach-percent", type=float, default=defaults.detach_percent,
                   help="%% of the state-0 NMC/CBD contact layer detached per step")
    p.add_argument("--soc-start", type=float, default=defaults.soc_start)
    p.add_argument("--soc-end", type=float, default=defaults.soc_end)
    p.add_argument("--hours-per-state", type=float, default=defaults.hours_per_state)
    p.add_argument("--drift-vox", type=int, default=defaults.drift_vox)
    p.add_argument("--image", action="store_true", help="also simulate a TXM grey volume per state")
    p.add_argument("--photons", type=float, default=ImagingConfig.photons)
    p.add_argument("--n-angles", type=int, default=ImagingConfig.n_angles)
    a = p.parse_args(argv)
    micro = MicrostructureConfig(shape=tuple(a.shape), voxel_size_nm=a.voxel_size_nm,
                                 nmc_fraction=a.nmc_fraction, cbd_fraction=a.cbd_fraction,
                                 cracked_fraction=a.cracked_fraction)
    evo = EvolutionConfig(states=a.states, shrink_percent=a.shrink_percent,
                          crack_growth_percent=a.crack_growth_percent,
                          detach_percent=a.detach_percent, soc_start=a.soc_start,
                          soc_end=a.soc_end, hours_per_state=a.hours_per_state,
                          drift_vox=a.drift_vox)
    imaging = ImagingConfig(photons=a.photons, n_angles=a.n_angles) if a.image else None
    manifest = write_evolution_series(a.out, micro, evo, a.seed, imaging)
    print(f"{evo.states} states written; manifest: {manifest}")


if __name__ == "__main__":
    main()
