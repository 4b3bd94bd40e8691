"""XANES spectro-tomography of the synthetic electrode: a Ni K-edge scan, imaged per energy.

Ground truth: a label volume from :func:`~src.simulation.microstructure.generate_microstructure`, its NMC
particles separated (:func:`~src.analysis.particles.separate_particles`), a state of charge
per voxel ``soc`` in [0, 1]: one value per particle (``soc_mean ± particle_soc_spread``,
uniform) plus a core–shell gradient (``core_shell`` = shell minus core; charging starts at the
surface), smooth in the normalised depth below the particle surface.

Spectra: the measured end-members ``ref_NiO.txt`` (Ni²⁺, discharged) and ``ref_LiNiO2.txt``
(Ni³⁺, charged) are used as *shapes*, shifted in energy so that, normalised to their maximum,
they cross half of it at ``edge_discharged_eV`` (≈ 8346 eV) and ``edge_charged_eV``
(≈ 8348.5 eV), the measured NMC anchors. An NMC voxel absorbs
``mu(E) = nmc_background (E/e0)^-p + nmc_jump [(1 - soc) D(E) + soc C(E)]`` per voxel; CBD and
pore follow the smooth ``(E/e0)^-p`` law only (nearly flat).

Imaging: the absorption is linear in five basis volumes (NMC, NMC·(1 - soc), NMC·soc, CBD,
pore), so each basis is projected once (:class:`~src.recon.operators.ParallelBeamProjector`)
and blurred with the detector optics; every energy is then a weighted sum of the basis
projections, measured with Poisson noise at ``photons`` per pixel (and detector gain errors),
``-log``, reconstructed by FBP (:func:`~src.recon.fbp.fbp`), and optionally translated by a
random sub-voxel drift (the sample moves between energies).

The true edge energy of each voxel is the half-jump energy (the definition used by
:mod:`src.xanes.edge`) of its noiseless spectrum, normalised with the pre/post-edge ranges
of the analysis at the scan energies and located on a 0.05 eV grid.

CLI: ``python -m src.simulation.xanes_scan --out data/xanes_sim --shape 64 64 64 --seed 0``
writes ``stack.tif`` (E, z, y, x), ``energies.txt``, ``labels.tif``, ``particles.tif``,
``soc.tif``, ``edge_energy.tif`` (NaN outside NMC), ``shifts.txt``, the two shifted end-members
``end_member_discharged.txt`` / ``end_member_charged.txt`` and ``xanes_sim.json``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from src.data.io import to_jsonable, write_json, write_text, write_tiff
from src.recon.fbp import fbp
from src.simulation.imaging import (
    ImagingConfig,
    _pad_for_cylinder,
    _projector,
    detector_optics,
    embed_in_cylinder,
    measure_line_integrals,
)
from src.simulation.microstructure import PHASES, MicrostructureConfig, generate_microstructure
from src.xanes.edge import (
    EdgeRanges,
    fit_ranges_to_scan,
    half_jump_energy,
    load_spectrum,
    normalize_spectra,
)
from src.xanes.references import builtin_reference_dir

__all__ = [
    "DEFAULT_REFERENCE_DIR",
    "SIMULATION_RANGES",
    "EndMembers",
    "XanesSimConfig",
    "default_energies",
    "XanesSample",
    "load_end_members",
    "make_xanes_sample",
    "reduced_energy_indices",
    "simulate_soc",
    "simulate_xanes_stack",
    "true_edge_energy",
    "write_xanes_sample",
]

#: the shipped end-members (package data of src.xanes: a fresh install has them)
DEFAULT_REFERENCE_DIR = builtin_reference_dir()
#: edge-analysis ranges matching :func:`default_energies` (relative to e0 = 8346 eV)
SIMULATION_RANGES = EdgeRanges(e0=8346.0, pre=(-60.0, -14.0), post=(25.0, 105.0), post_order=1,
                               edge=(-12.0, 12.0), white_line=(-2.0, 14.0))


def default_energies() -> np.ndarray:
    """The 60-energy Ni K-edge scan (eV).

    5 pre-edge (8290–8330, 10 eV), 51 across the edge (8334–8364, 0.6 eV) and 4 post-edge
    (8375–8450, 25 eV).
    """
    return np.round(np.concatenate([np.arange(8290.0, 8331.0, 10.0), 8334.0 + 0.6 * np.arange(51),
                                    [8375.0, 8400.0, 8425.0, 8450.0]]), 3)


def reduced_energy_indices(energies: np.ndarray, n: int = 15) -> np.ndarray:
    """``n`` indices of a reduced scan.

    2 pre-edge and 2 post-edge energies (the outer ones) and ``n - 4`` spread evenly over 8338–8356
    eV (the edge and white line).
    """
    energies = np.asarray(energies, float)
    if n < 6 or n > energies.size:
        raise ValueError(f"a reduced scan needs 6..{energies.size} energies, got {n}")
    pre, post = np.flatnonzero(energies < 8333), np.flatnonzero(energies > 8370)
    if pre.size < 2 or post.size < 2:
        raise ValueError("the scan needs >= 2 energies below 8333 eV and >= 2 above 8370 eV")
    targets = np.linspace(8338.0, 8356.0, n - 4)
    edge = np.unique([int(np.argmin(np.abs(energies - t))) for t in targets])
    return np.sort(np.concatenate([pre[[0, -1]], edge, post[[0, -1]]]))


@dataclass
class EndMembers:
    """Shifted end-member spectra on a fine grid: ``energies`` (eV), ``discharged``, ``charged``."""

    energies: np.ndarray
    discharged: np.ndarray
    charged: np.ndarray
    shifts_eV: tuple[float, float]

    def at(self, energies: np.ndarray) -> np.ndarray:
        """``(E, 2)`` (discharged, charged) interpolated at ``energies``."""
        return np.stack([np.interp(energies, self.energies, self.discharged),
                         np.interp(energies, self.energies, self.charged)], 1)


def _half_max_crossing(energies: np.ndarray, mu: np.ndarray) -> float:
    """First energy where ``mu / max(mu)`` reaches 0.5 (linear interpolation)."""
    y = mu / mu.max()
    k = int(np.argmax(y >= 0.5))
    return float(np.interp(0.5, y[k - 1:k + 1], energies[k - 1:k + 1]))


def load_end_members(
    reference_dir: str | Path | None = DEFAULT_REFERENCE_DIR, edge_discharged_eV: float = 8346.0,
    edge_charged_eV: float = 8348.5, step_eV: float = 0.05,
) -> EndMembers:
    """``ref_NiO.txt`` / ``ref_LiNiO2.txt`` shifted to the NMC half-maximum anchors.

    Resampled on a ``step_eV`` grid over their common range.
    """
    ref = Path(reference_dir or DEFAULT_REFERENCE_DIR)
    files = [ref / "ref_NiO.txt", ref / "ref_LiNiO2.txt"]
    for f in files:
        if not f.exists():
            raise FileNotFoundError(f"end-member spectrum {f} not found; set the XANES reference "
                                    "folder (ref_NiO.txt, ref_LiNiO2.txt) in the config")
    spectra = [load_spectrum(f) for f in files]
    shifts = [target - _half_max_crossing(e, mu)
              for (e, mu), target in zip(spectra, (edge_discharged_eV, edge_charged_eV), strict=True)]
    lo = max(e[0] + s for (e, _), s in zip(spectra, shifts, strict=True))
    hi = min(e[-1] + s for (e, _), s in zip(spectra, shifts, strict=True))
    grid = np.arange(np.ceil(lo), np.floor(hi), step_eV)
    d, c = (np.interp(grid, e + s, mu) for (e, mu), s in zip(spectra, shifts, strict=True))
    return EndMembers(grid, d, c, (float(shifts[0]), float(shifts[1])))


@dataclass
class XanesSimConfig:
    """Chemistry, spectra and dose of the XANES simulation (absorption per voxel, 1/voxel)."""

    energies: tuple[float, ...] | None = None  # eV; None: default_energies()
    reference_dir: str | None = str(DEFAULT_REFERENCE_DIR)  # None: the shipped end-members
    edge_discharged_eV: float = 8346.0  # half of the maximum, discharged NMC
    edge_charged_eV: float = 8348.5  # half of the maximum, charged NMC
    soc_mean: float = 0.5
    particle_soc_spread: float = 0.3  # particle SOC uniform in mean ± spread (clipped to [0, 1])
    core_shell: float = 0.3  # shell minus core SOC within a particle
    nmc_background: float = 0.012  # non-resonant NMC absorption at e0
    nmc_jump: float = 0.010  # Ni K-edge jump of NMC
    cbd: float = 0.005
    pore: float = 0.0005
    power: float = 2.8  # non-resonant absorption ~ (E / e0)^-power
    drift_px: float = 0.0  # std of the random per-energy translation (voxels, z y x)
    particle_min_distance: int = 3  # watershed seeds of the particle separation (voxels)

    def __post_init__(self) -> None:
        if self.energies is not None:
            self.energies = tuple(float(e) for e in self.energies)
        if not self.edge_discharged_eV < self.edge_charged_eV:
            raise ValueError("edge_discharged_eV must be below edge_charged_eV")
        if not 0 <= self.soc_mean <= 1:
            raise ValueError(f"soc_mean must be in [0, 1], got {self.soc_mean}")

    def energy_grid(self) -> np.ndarray:
        """The scan energies (eV): ``energies``, or the default 60-energy scan when None."""
        return default_energies() if self.energies is None else np.asarray(self.energies, float)


def simulate_soc(labels: np.ndarray, cfg: XanesSimConfig, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(soc, particles)``: SOC per voxel float32 (NaN outside NMC) and particle ids int32."""
    from src.analysis.particles import separate_particles

    nmc = labels == PHASES.index("NMC")
    particles, _ = separate_particles(nmc, min_distance=cfg.particle_min_distance)
    particles = np.where(nmc, particles, 0).astype(np.int32)
    rng = np.random.default_rng(seed + 7919)
    n = int(particles.max())
    p_soc = np.clip(cfg.soc_mean + cfg.particle_soc_spread * rng.uniform(-1, 1, n + 1), 0, 1)
    try:
        import edt

        depth = edt.edt(particles, black_border=False).astype(np.float32)
    except ImportError:  # pragma: no cover - edt comes with porespy
        depth = np.zeros(particles.shape, np.float32)
        for i, sl in enumerate(ndimage.find_objects(particles), start=1):
            if sl is not None:
                depth[sl] = np.where(particles[sl] == i, ndimage.distance_transform_edt(particles[sl] == i), depth[sl])
    dmax = np.zeros(n + 1, np.float32)
    if n:
        dmax[1:] = ndimage.maximum(depth, particles, np.arange(1, n + 1))
    rel = np.where(particles > 0, (depth - 0.5) / np.maximum(dmax[particles] - 0.5, 0.5), 0.0)
    rel = np.clip(rel, 0.0, 1.0)  # 0 at the surface, 1 at the particle's centre
    soc = np.clip(p_soc[particles] + cfg.core_shell * (0.5 - rel), 0, 1).astype(np.float32)
    return np.where(nmc, soc, np.nan).astype(np.float32), particles


def _background(energies: np.ndarray, e0: float, power: float) -> np.ndarray:
    return (np.asarray(energies, float) / e0) ** (-power)


def true_edge_energy(
    soc: np.ndarray, cfg: XanesSimConfig, members: EndMembers, ranges: EdgeRanges = SIMULATION_RANGES,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Half-jump edge energy (eV) of the noiseless spectrum of each SOC value (NaN stays NaN).

    Also returns the lookup table ``{"soc", "edge_eV"}`` it interpolates (1001 SOC values).
    """
    scan = cfg.energy_grid()
    frac = np.linspace(0, 1, 1001)
    bg = cfg.nmc_background * _background(scan, ranges.e0, cfg.power)
    spectra = bg[:, None] + cfg.nmc_jump * (members.at(scan) @ np.stack([1 - frac, frac]))
    norm = normalize_spectra(scan, spectra, ranges)  # normalisation from the scan energies ...
    fine = members.energies[(members.energies >= scan[0]) & (members.energies <= scan[-1])]
    fine_mu = (cfg.nmc_background * _background(fine, ranges.e0, cfg.power))[:, None] + \
        cfg.nmc_jump * (members.at(fine) @ np.stack([1 - frac, frac]))
    de = fine - ranges.e0
    pre = norm.pre_coef[0] + de[:, None] * norm.pre_coef[1]
    fine_norm = (fine_mu - pre) / norm.jump  # ... the crossing on the fine grid
    edge = half_jump_energy(fine, fine_norm, ranges.absolute("edge"))
    out = np.interp(np.nan_to_num(soc, nan=0.0), frac, edge).astype(np.float32)
    return np.where(np.isnan(soc), np.nan, out).astype(np.float32), {"soc": frac, "edge_eV": edge}


def _absorption_basis(cfg: XanesSimConfig, members: EndMembers, energies: np.ndarray, e0: float) -> np.ndarray:
    """``(E, 5)`` weights of the basis volumes (NMC, NMC(1-soc), NMC soc, CBD, pore) per energy."""
    bg = _background(energies, e0, cfg.power)
    ends = members.at(energies)
    return np.stack([cfg.nmc_background * bg, cfg.nmc_jump * ends[:, 0], cfg.nmc_jump * ends[:, 1],
                     cfg.cbd * bg, cfg.pore * bg], 1)


def simulate_xanes_stack(
    labels: np.ndarray, soc: np.ndarray, cfg: XanesSimConfig, imaging: ImagingConfig,
    seed: int, energies: np.ndarray | None = None, photons: float | None = None,
    members: EndMembers | None = None, progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Reconstructed spectral stack ``(E, z, y, x)`` float32 and the drift shifts ``(E, 3)``.

    ``energies`` default to the config's; ``photons`` per detector pixel and energy (None:
    noiseless, no rings); the projections, optics and FBP follow ``imaging``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or soc.shape != labels.shape:
        raise ValueError(f"labels and soc must be the same (z, y, x) shape, got {labels.shape}, {soc.shape}")
    energies = cfg.energy_grid() if energies is None else np.asarray(energies, float)
    members = members or load_end_members(cfg.reference_dir, cfg.edge_discharged_eV, cfg.edge_charged_eV)
    rng = np.random.default_rng(seed)
    nz, ny, nx = labels.shape
    pad = _pad_for_cylinder(ny, nx) if imaging.pad_px is None else int(imaging.pad_px)
    nmc = (labels == PHASES.index("NMC")).astype(np.float32)
    s = np.nan_to_num(soc, nan=0.0).astype(np.float32) * nmc
    basis = [nmc, nmc - s, s, (labels == PHASES.index("CBD")).astype(np.float32),
             (labels == PHASES.index("pore")).astype(np.float32)]
    op = _projector(ny + 2 * pad, nx + 2 * pad, imaging.n_angles)
    chunks = [slice(z, min(z + imaging.chunk_slices, nz)) for z in range(0, nz, imaging.chunk_slices)]
    proj = np.empty((len(basis), imaging.n_angles, nz, op.sino_shape[-1]), np.float32)
    with torch.no_grad():
        for k, b in enumerate(basis):
            mu = embed_in_cylinder(b, pad)
            for sl in chunks:
                proj[k][:, sl] = op(torch.from_numpy(mu[sl])).numpy().transpose(1, 0, 2)
            proj[k] = detector_optics(proj[k], imaging)
    weights = _absorption_basis(cfg, members, energies, SIMULATION_RANGES.e0).astype(np.float32)
    gain = 1.0 + imaging.ring_strength * rng.standard_normal((1, nz, proj.shape[-1]))
    shifts = rng.normal(0.0, cfg.drift_px, (energies.size, 3)) if cfg.drift_px > 0 else np.zeros((energies.size, 3))
    stack = np.empty((energies.size, nz, ny, nx), np.float32)
    for e in tqdm(range(energies.size), desc="simulate XANES", disable=not progress, leave=False):
        p = np.tensordot(weights[e], proj, axes=1)
        p = measure_line_integrals(p, photons, gain if photons is not None else 1.0, rng)
        with torch.no_grad():
            for sl in chunks:
                sino = torch.from_numpy(np.ascontiguousarray(p[:, sl].transpose(1, 0, 2)))
                rec = fbp(sino, op, imaging.filter_name).numpy()
                stack[e, sl] = rec[:, pad:pad + ny, pad:pad + nx]
        if cfg.drift_px > 0:
            stack[e] = ndimage.shift(stack[e], shifts[e], order=3, mode="nearest")
    return stack, shifts


@dataclass
class XanesSample:
    """One simulated XANES sample with its ground truth (see :func:`make_xanes_sample`)."""

    labels: np.ndarray
    particles: np.ndarray
    soc: np.ndarray
    edge_energy: np.ndarray
    stack: np.ndarray
    energies: np.ndarray
    shifts: np.ndarray
    members: EndMembers
    meta: dict[str, Any] = field(default_factory=dict)


def make_xanes_sample(
    seed: int, micro: MicrostructureConfig, cfg: XanesSimConfig, imaging: ImagingConfig,
    photons: float | None, energies: np.ndarray | None = None, progress: bool = False,
) -> XanesSample:
    """Microstructure → SOC → spectral stack, all from ``seed``."""
    start = time.perf_counter()
    labels = generate_microstructure(micro, seed)
    members = load_end_members(cfg.reference_dir, cfg.edge_discharged_eV, cfg.edge_charged_eV)
    soc, particles = simulate_soc(labels, cfg, seed)
    # the truth's normalisation: the fixed simulation ranges, placed inside the scan when it is
    # narrower (the same energies for the default scan)
    edge, _ = true_edge_energy(soc, cfg, members, fit_ranges_to_scan(cfg.energy_grid(), SIMULATION_RANGES)[0])
    energies = cfg.energy_grid() if energies is None else np.asarray(energies, float)
    stack, shifts = simulate_xanes_stack(labels, soc, cfg, imaging, seed, energies, photons,
                                         members, progress)
    meta = {"seed": int(seed), "photons_per_energy": photons, "n_energies": int(energies.size),
            "microstructure": to_jsonable(micro), "xanes": to_jsonable(cfg),
            "imaging": to_jsonable(imaging), "end_member_shifts_eV": list(members.shifts_eV),
            "analysis_ranges": to_jsonable(SIMULATION_RANGES),
            "n_particles": int(particles.max()), "generation_time_s": round(time.perf_counter() - start, 2)}
    return XanesSample(labels, particles, soc, edge, stack, energies, shifts, members, meta)


def write_xanes_sample(out_dir: str | Path, sample: XanesSample) -> dict[str, Path]:
    """Write a sample (files listed in the module doc); the JSON goes last."""
    out = Path(out_dir)
    paths = {k: out / f for k, f in [("stack", "stack.tif"), ("energies", "energies.txt"),
                                     ("labels", "labels.tif"), ("particles", "particles.tif"),
                                     ("soc", "soc.tif"), ("edge_energy", "edge_energy.tif"),
                                     ("shifts", "shifts.txt"),
                                     ("discharged", "end_member_discharged.txt"),
                                     ("charged", "end_member_charged.txt"), ("meta", "xanes_sim.json")]}
    write_tiff(paths["stack"], sample.stack)
    write_text(paths["energies"], "# energy_eV\n" + "\n".join(f"{e:.3f}" for e in sample.energies) + "\n")
    write_tiff(paths["labels"], sample.labels)
    write_tiff(paths["particles"], sample.particles)
    write_tiff(paths["soc"], sample.soc)
    write_tiff(paths["edge_energy"], sample.edge_energy)
    write_text(paths["shifts"], "# dz dy dx (voxels) applied to each energy\n" +
               "\n".join(" ".join(f"{v:.4f}" for v in row) for row in sample.shifts) + "\n")
    m = sample.members
    for key, y in (("discharged", m.discharged), ("charged", m.charged)):
        write_text(paths[key], "# energy_eV absorption (normalised end-member, shifted)\n" +
                   "\n".join(f"{e:.3f} {v:.6f}" for e, v in zip(m.energies, y, strict=True)) + "\n")
    write_json(paths["meta"], {**sample.meta, "phases": list(PHASES),
                               "files": {k: p.name for k, p in paths.items()}})
    return paths


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see the module doc)."""
    parser = argparse.ArgumentParser(description="Simulate a XANES spectro-tomography stack.")
    parser.add_argument("--out", type=Path, default=Path("data/xanes_sim"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--shape", type=int, nargs=3, default=[64, 64, 64], metavar=("Z", "Y", "X"))
    parser.add_argument("--voxel-size-nm", type=float, default=60.0)
    parser.add_argument("--photons", type=float, default=1e4, help="per pixel and energy; 0: noiseless")
    parser.add_argument("--n-angles", type=int, default=181)
    parser.add_argument("--drift-px", type=float, default=0.0)
    parser.add_argument("--reference-dir", type=Path, default=DEFAULT_REFERENCE_DIR)
    args = parser.parse_args(argv)
    micro = MicrostructureConfig(shape=tuple(args.shape), voxel_size_nm=args.voxel_size_nm)
    cfg = XanesSimConfig(reference_dir=str(args.reference_dir), drift_px=args.drift_px)
    imaging = ImagingConfig(n_angles=args.n_angles)
    sample = make_xanes_sample(args.seed, micro, cfg, imaging, args.photons or None, progress=True)
    paths = write_xanes_sample(args.out, sample)
    print(f"wrote {paths['stack']} {sample.stack.shape} in {sample.meta['generation_time_s']} s")


if __name__ == "__main__":
    main()
