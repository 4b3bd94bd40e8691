"""XANES chemical-state maps:
``python xanes.py input=STACK energies=FILE [mask=SEG.tif] [align=true] output_dir=DIR``.

Reads and checks the stack, the energy list, the mask and the end-members before any work;
optionally aligns the energies (phase correlation, sub-pixel); fits every voxel of the mask
(pre/post-edge normalisation, edge jump, half-jump and steepest-slope edge energies, white
line, linear-combination fit → SOC and oxidation state); separates particles and writes maps
(TIFF), per-particle statistics with the radial core–shell profile (CSV), ``summary.json``
(fit ranges, counts, means) and figures (PNG) into ``output_dir``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from src.cli import run_command

log = logging.getLogger("xanes")


def load_mask(path: str | Path, spatial: tuple[int, ...], class_names: list[str], phase: str | None,
              label_values: list[int] | None) -> np.ndarray:
    """Bool mask of ``phase`` from a segmentation of shape ``spatial``; ``phase=None`` (or a
    bool TIFF): the non-zero voxels; a file holding only 0 and 1 (and no ``label_values``) is a
    binary mask: its 1s, whatever ``phase``."""
    from src.data.io import read_image

    seg = np.asarray(read_image(path, mmap=False))
    if seg.shape != spatial:
        raise ValueError(f"mask {path}: shape {seg.shape} differs from the stack's spatial shape {spatial}")
    if not (np.issubdtype(seg.dtype, np.integer) or seg.dtype == bool):
        raise ValueError(f"mask {path}: expected integer labels or a 0/1 mask, got dtype {seg.dtype}")
    values = np.unique(seg)
    if phase is None or seg.dtype == bool:
        return seg != 0
    if label_values is None and set(values.tolist()) <= {0, 1}:
        # a 0/1 mask, not a segmentation: mask_phase's index (NMC = 0) would pick the background
        log.warning("mask %s holds only 0 and 1: taken as a binary mask (the 1s are analysed), not "
                    "as phase %r = %d of class_names; set label_values to read it as labels",
                    path, phase, class_names.index(phase) if phase in class_names else -1)
        if not values.size or values.max() == 0:
            raise ValueError(f"mask {path}: no voxel is 1 (an empty 0/1 mask)")
        return seg == 1
    if phase not in class_names:
        raise ValueError(f"mask_phase {phase!r} is not one of class_names {class_names}")
    stored = label_values[class_names.index(phase)] if label_values else class_names.index(phase)
    mask = seg == stored
    if not mask.any():
        raise ValueError(f"mask {path}: no voxel has the value {stored} of phase {phase} "
                         f"(values present: {values[:10].tolist()})")
    return mask


def run_xanes(cfg: DictConfig) -> dict[str, Any]:
    """The whole command; returns the summary (also written as ``summary.json``)."""
    from src.analysis.particles import separate_particles
    from src.data.io.spectra import read_energies, read_spectral_stack
    from src.xanes.alignment import align_stack
    from src.xanes.edge import load_spectrum
    from src.xanes.maps import analyze_stack, particle_statistics, write_outputs

    start = time.perf_counter()
    energies = read_energies(cfg.energies)
    stack = read_spectral_stack(cfg.input, energies.size, cfg.get("dataset"))
    spatial = stack.shape[1:]
    class_names = [str(c) for c in cfg.class_names]
    label_values = None if cfg.label_values is None else [int(v) for v in cfg.label_values]
    phase = None if cfg.mask_phase is None else str(cfg.mask_phase)
    mask = (load_mask(cfg.mask, spatial, class_names, phase, label_values)
            if cfg.mask else np.ones(spatial, bool))
    refs = [load_spectrum(p) for p in (cfg.references or [])]
    names = [str(n) for n in (cfg.reference_names or [])] or [Path(p).stem for p in cfg.references or []]
    if len(names) != len(refs):
        raise ValueError(f"{len(refs)} references but reference_names {names}")
    analysis = hydra.utils.instantiate(cfg.analysis)
    analysis.oxidation_states = tuple(analysis.oxidation_states)
    log.info("stack %s, %d energies %.1f-%.1f eV, %d voxels in the mask; %s", stack.shape,
             energies.size, energies[0], energies[-1], int(mask.sum()), analysis.ranges.describe())
    shifts = None
    if cfg.align:
        ref = cfg.align_reference
        stack, shifts = align_stack(stack, ref if isinstance(ref, str) else int(ref), int(cfg.align_upsample),
                                    progress=True)
        log.info("aligned: largest shift %.2f px", float(np.abs(shifts).max()))
    t_fit = time.perf_counter()
    maps = analyze_stack(energies, stack, mask, refs or None, names or None, analysis, progress=True)
    fit_s = time.perf_counter() - t_fit
    particles, _ = separate_particles(mask, min_distance=int(cfg.particles.min_distance))
    particles = np.where(mask, particles, 0).astype(np.int32)
    rows, profile = particle_statistics(maps, particles, n_shells=int(cfg.particles.n_shells),
                                        min_voxels=int(cfg.particles.min_voxels))
    valid = maps["valid"].astype(bool) & mask
    summary: dict[str, Any] = {
        "input": str(Path(cfg.input).resolve()), "energies": str(Path(cfg.energies).resolve()),
        "stack_shape": list(stack.shape), "energy_range_eV": [float(energies[0]), float(energies[-1])],
        "fit_ranges": analysis.ranges.describe(), "analysis": OmegaConf.to_container(cfg.analysis, resolve=True),
        "references": {n: str(p) for n, p in zip(names, cfg.references or [], strict=True)},
        "mask_voxels": int(mask.sum()), "valid_voxels": int(valid.sum()),
        "particles": len(rows), "fit_time_s": round(fit_s, 3),
        "voxels_per_s": round(float(mask.sum()) / max(fit_s, 1e-9), 1),
        "means": {k: float(np.nanmean(v[valid])) for k, v in maps.items()
                  if k not in ("valid",) and valid.any() and np.isfinite(v[valid]).any()},
        "alignment_shifts_px": None if shifts is None else shifts.round(3).tolist(),
    }
    written = write_outputs(cfg.output_dir, maps, rows, profile, summary, mask, bool(cfg.figure))
    summary["total_time_s"] = round(time.perf_counter() - start, 2)
    log.info("fit ranges: %s", analysis.ranges.describe())
    for k in ("edge_energy", "edge_energy_lcf", "white_line", "soc"):
        if k in summary["means"]:
            log.info("mean %s: %.3f", k, summary["means"][k])
    log.info("%d particles; %d files written to %s", len(rows), len(written), cfg.output_dir)
    return summary


if __name__ == "__main__":
    run_command("xanes", run_xanes)
