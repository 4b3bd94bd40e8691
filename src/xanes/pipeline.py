"""The body of ``xanes.py`` for one stack or one table of point spectra.

:func:`run_stack` reads and checks the inputs (stack or spectra table, energies, mask or
segmentation, end-members) before any work, optionally aligns the energies, optionally applies
a trained net (a callable handed in by :mod:`src.inference.xanes_maps`, which owns the
checkpoints), fits every voxel (:func:`src.xanes.maps.analyze`), derives end-members from the
data when ``references: from_data``, separates particles, joins their geometry with their SOC
(:mod:`src.xanes.join`) and writes maps, tables, ``summary.json`` and figures.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig, OmegaConf

__all__ = ["FROM_DATA", "NetOutput", "load_end_member_spectra", "load_inputs", "load_mask",
           "load_segmentation", "run_stack"]

log = logging.getLogger("xanes")
FROM_DATA = "from_data"
#: what a trained net hands back: ("denoise", energies, stack) or ("edge", input energies, edge map)
NetOutput = tuple[str, np.ndarray, np.ndarray]


def load_segmentation(
    path: str | Path, spatial: tuple[int, ...], class_names: list[str], phase: str | None,
    label_values: list[int] | None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``(mask, labels)``: the bool mask of ``phase`` and, for a segmentation, its phase indices.

    The mask is as :func:`load_mask`; the labels are the phase indices when the file is a
    segmentation of ``class_names`` (not a 0/1 mask), else None.
    """
    from src.data.io import read_image

    seg = np.asarray(read_image(path, mmap=False))
    if seg.shape != spatial:
        raise ValueError(f"mask {path}: shape {seg.shape} differs from the stack's spatial shape {spatial}")
    if not (np.issubdtype(seg.dtype, np.integer) or seg.dtype == bool):
        raise ValueError(f"mask {path}: expected integer labels or a 0/1 mask, got dtype {seg.dtype}")
    values = np.unique(seg)
    if phase is None or seg.dtype == bool:
        return seg != 0, None
    if label_values is None and set(values.tolist()) <= {0, 1}:
        # a 0/1 mask, not a segmentation: mask_phase's index (NMC = 0) would pick the background
        log.warning("mask %s holds only 0 and 1: taken as a binary mask (the 1s are analysed), not "
                    "as phase %r = %d of class_names; set label_values to read it as labels",
                    path, phase, class_names.index(phase) if phase in class_names else -1)
        if not values.size or values.max() == 0:
            raise ValueError(f"mask {path}: no voxel is 1 (an empty 0/1 mask)")
        return seg == 1, None
    if phase not in class_names:
        raise ValueError(f"mask_phase {phase!r} is not one of class_names {class_names}")
    stored = label_values[class_names.index(phase)] if label_values else class_names.index(phase)
    mask = seg == stored
    if not mask.any():
        raise ValueError(f"mask {path}: no voxel has the value {stored} of phase {phase} "
                         f"(values present: {values[:10].tolist()})")
    labels = None
    try:
        from src.analysis.morphology import remap_labels

        labels = (remap_labels(seg, label_values, str(path)) if label_values
                  else seg.astype(np.uint8) if values.max() < len(class_names) else None)
    except ValueError as err:
        log.warning("mask %s: not read as phase labels for the particle join (%s)", path, err)
    return mask, labels


def load_mask(path: str | Path, spatial: tuple[int, ...], class_names: list[str], phase: str | None,
              label_values: list[int] | None) -> np.ndarray:
    """Bool mask of ``phase`` from a segmentation of shape ``spatial``.

    ``phase=None`` (or a bool TIFF): the non-zero voxels; a file holding only 0 and 1 (and no
    ``label_values``) is a binary mask: its 1s, whatever ``phase``.
    """
    return load_segmentation(path, spatial, class_names, phase, label_values)[0]


def load_inputs(cfg: DictConfig) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """``(energies, stack, spectrum_names)``: a spectral stack and its energies, or point spectra.

    A table of point spectra (``input`` a CSV/TXT or a folder of two-column files, ``energies``
    null) is returned as an ``(E, N)`` stack with the spectra's names.
    """
    from src.data.io.spectra import (
        is_spectra_table,
        read_energies,
        read_spectra_table,
        read_spectral_stack,
    )

    if cfg.get("input") in (None, "", "???"):
        raise ValueError("xanes: give input=STACK energies=FILE, input=SPECTRA.csv, or series=MANIFEST")
    if cfg.get("energies") in (None, "") and is_spectra_table(cfg.input):
        energies, stack, names = read_spectra_table(cfg.input)
        return energies, stack, names
    if cfg.get("energies") in (None, ""):
        raise ValueError(f"energies: a stack ({cfg.input}) needs its energy list (energies=FILE); only "
                         f"a table of spectra (CSV/TXT with energy first, or a folder of two-column "
                         f"files) carries its own")
    energies = read_energies(cfg.energies)
    stack = read_spectral_stack(cfg.input, energies.size, cfg.get("dataset"))
    return energies, stack, None


def load_end_member_spectra(cfg: DictConfig) -> tuple[list | str | None, list[str], dict[str, str]]:
    """``(references, names, files)``: the end-member spectra, their names and files.

    The spectra are ``[(energies, mu), ...]`` (any number), or :data:`FROM_DATA`, or None.
    """
    from src.xanes.edge import load_spectrum
    from src.xanes.references import resolve_reference

    refs_cfg = cfg.get("references")
    if refs_cfg in (None, "", []) or (isinstance(refs_cfg, str) and refs_cfg.lower() in ("none", "null")):
        return None, [], {}
    if isinstance(refs_cfg, str):
        if refs_cfg != FROM_DATA:
            raise ValueError(f"references: {refs_cfg!r} is neither a list of spectrum files nor "
                             f"{FROM_DATA!r}")
        names = ["discharged", "charged"]
        return FROM_DATA, names, {n: FROM_DATA for n in names}
    files = [resolve_reference(p) for p in refs_cfg]
    names = [str(n) for n in (cfg.get("reference_names") or [])] or [Path(p).stem for p in files]
    if len(names) != len(files):
        raise ValueError(f"{len(files)} references but reference_names {names}")
    return [load_spectrum(p) for p in files], names, {n: str(p) for n, p in zip(names, files, strict=True)}


def _analysis_config(cfg: DictConfig, from_data: bool):
    import hydra

    analysis = hydra.utils.instantiate(cfg.analysis)
    analysis.oxidation_states = tuple(analysis.oxidation_states)
    if from_data and len(analysis.oxidation_states) != 2:
        analysis.oxidation_states = (0.0, 1.0)
    return analysis


def run_stack(cfg: DictConfig, apply_net: Callable[[np.ndarray, np.ndarray], NetOutput] | None = None,
              ) -> dict[str, Any]:
    """The whole single-stack command; returns the summary (also written as ``summary.json``).

    Args:
        cfg: the composed ``conf/xanes.yaml``.
        apply_net: a trained net as ``(energies, stack) -> NetOutput`` (None: none), built and
            checked against the scan by :func:`src.inference.xanes_maps.xanes_net`.
    """
    from src.analysis.particles import separate_particles
    from src.xanes.alignment import align_stack
    from src.xanes.edge import normalize_spectra
    from src.xanes.end_members import end_members_from_data
    from src.xanes.join import correlations, join_figure, particle_join
    from src.xanes.maps import (
        analyze,
        mask_edge_shape,
        particle_statistics,
        soc_saturation,
        write_outputs,
    )

    start = time.perf_counter()
    energies, stack, spectrum_names = load_inputs(cfg)
    spatial = stack.shape[1:]
    class_names = [str(c) for c in cfg.class_names]
    label_values = None if cfg.label_values is None else [int(v) for v in cfg.label_values]
    phase = None if cfg.mask_phase is None else str(cfg.mask_phase)
    mask, labels = ((load_segmentation(cfg.mask, spatial, class_names, phase, label_values))
                    if cfg.mask else (np.ones(spatial, bool), None))
    refs, names, ref_files = load_end_member_spectra(cfg)
    from_data = refs == FROM_DATA
    analysis = _analysis_config(cfg, from_data)
    log.info("stack %s, %d energies %.1f-%.1f eV, %d voxels in the mask; %s", stack.shape,
             energies.size, energies[0], energies[-1], int(mask.sum()), analysis.ranges.describe())
    shifts = None
    if cfg.align:
        if stack.ndim < 3:
            raise ValueError("align=true needs images (a stack), not a table of point spectra")
        ref = cfg.align_reference
        stack, shifts = align_stack(stack, ref if isinstance(ref, str) else int(ref), int(cfg.align_upsample),
                                    progress=True)
        log.info("aligned: largest shift %.2f px", float(np.abs(shifts).max()))
    net_info: dict[str, Any] | None = None
    cnn_edge = None
    if apply_net is not None:
        kind, net_energies, out = apply_net(energies, stack)
        net_info = {"ckpt_path": str(cfg.ckpt_path), "task": kind, "input_energies": int(net_energies.size)}
        if kind == "denoise":
            stack = out
            log.info("denoised the stack with %s", cfg.ckpt_path)
        else:
            cnn_edge = np.where(mask, out, np.nan).astype(np.float32)
            log.info("edge-energy map from %d energies by %s", net_energies.size, cfg.ckpt_path)
    t_fit = time.perf_counter()
    result = analyze(energies, stack, mask, None if from_data else refs, names or None, analysis, progress=True)
    end_member_info: dict[str, Any] = dict(ref_files)
    if from_data:
        flat = stack.reshape(energies.size, -1)
        idx = np.flatnonzero((result.maps["valid"].astype(bool) & mask).ravel())
        sub = idx[:: max(1, idx.size // 50000)]
        norm = normalize_spectra(energies, flat[:, sub], result.ranges,
                                 mask_edge_shape(energies, flat, idx, result.ranges)).norm
        basis = end_members_from_data(norm, result.maps["edge_energy"].ravel()[sub],
                                      fraction=float(cfg.from_data.fraction),
                                      iterations=int(cfg.from_data.iterations))
        analysis.ranges = result.ranges
        analysis.fit_to_scan = False
        first_notes = result.notes
        result = analyze(energies, stack, mask, None, names, analysis, progress=True, basis=basis)
        result.notes = first_notes + result.notes
        end_member_info = {"method": "from_data: extreme-state clusters along the first principal "
                                     "component, refined by MCR-ALS", **{n: FROM_DATA for n in names}}
    maps = result.maps
    if cnn_edge is not None:
        maps["edge_energy_fit"] = maps["edge_energy"]
        maps["edge_energy"] = cnn_edge
    fit_s = time.perf_counter() - t_fit
    for note in result.notes:  # an end-member that misses the edge region is a warning
        (log.warning if "misses part of the edge window" in note else log.info)("ranges: %s", note)
    valid = maps["valid"].astype(bool) & mask
    rows: list[dict[str, Any]] = []
    profile: list[dict[str, Any]] = []
    corr = None
    if len(spatial) >= 2:
        hulls, _ = separate_particles(mask, min_distance=int(cfg.particles.min_distance))
        particles = np.where(mask, hulls, 0).astype(np.int32)
        rows, profile = particle_statistics(maps, particles, n_shells=int(cfg.particles.n_shells),
                                            min_voxels=int(cfg.particles.min_voxels))
        if labels is not None and len(spatial) == 3 and cfg.particles.join:
            phases = {n: (class_names.index(n) if n in class_names else -1) for n in ("NMC", "CBD", "pore")}
            phases["NMC"] = class_names.index(phase) if phase in class_names else phases["NMC"]
            rows = particle_join(rows, hulls, labels, phases, float(cfg.voxel_size_nm),
                                 int(cfg.particles.axis), str(cfg.particles.side))
            quantity = "soc_mean" if "soc" in maps else "edge_energy_mean"
            corr = correlations(rows, quantity)
            if cfg.figure and rows:
                join_figure(Path(cfg.output_dir) / "particle_join.png", rows, corr, quantity)
            for col, c in corr.items():
                log.info("%s vs %s: Spearman rho %.3f, p %.3g (n=%d)", quantity, col, c["spearman_rho"],
                         c["p_value"], c["n"])
    else:
        rows = _spectrum_rows(maps, spectrum_names)
    saturation = soc_saturation(maps["soc"][valid], float(cfg.soc_saturation_threshold)) if "soc" in maps else None
    if saturation and saturation["saturated"]:
        log.warning("SOC saturates: %.1f %% of the valid voxels at 0, %.1f %% at 1 (more than %.0f %%): "
                    "the end-members do not span the electrode's states; try references=from_data or "
                    "end-members of the electrode's own extreme states", 100 * saturation["fraction_at_0"],
                    100 * saturation["fraction_at_1"], 100 * saturation["threshold"])
    summary: dict[str, Any] = {
        "input": str(Path(cfg.input).resolve()),
        "energies": str(Path(cfg.energies).resolve()) if cfg.get("energies") else None,
        "stack_shape": list(stack.shape), "energy_range_eV": [float(energies[0]), float(energies[-1])],
        "fit_ranges": result.ranges.describe(), "ranges_used": result.ranges.as_dict(),
        "range_notes": result.notes,
        "e0_source": "data" if analysis_e0_from_data(cfg) else "config",
        "analysis": OmegaConf.to_container(cfg.analysis, resolve=True),
        "references": end_member_info, "mask_voxels": int(mask.sum()), "valid_voxels": int(valid.sum()),
        "particles": len(rows) if len(spatial) >= 2 else 0, "fit_time_s": round(fit_s, 3),
        "voxels_per_s": round(float(mask.sum()) / max(fit_s, 1e-9), 1),
        "means": {k: float(np.nanmean(v[valid])) for k, v in maps.items()
                  if k not in ("valid",) and valid.any() and np.isfinite(v[valid]).any()},
        "soc_saturation": saturation, "cnn": net_info, "particle_correlations": corr,
        "alignment_shifts_px": None if shifts is None else shifts.round(3).tolist(),
    }
    if result.basis is not None:
        summary["end_member_basis"] = {"energies_eV": energies.tolist(),
                                       **{n: result.basis[:, i].tolist() for i, n in enumerate(result.names)}}
    written = write_outputs(cfg.output_dir, maps, rows, profile, summary, mask,
                            bool(cfg.figure) and len(spatial) >= 2,
                            table_name="particles.csv" if len(spatial) >= 2 else "spectra.csv")
    summary["total_time_s"] = round(time.perf_counter() - start, 2)
    log.info("fit ranges: %s", result.ranges.describe())
    for k in ("edge_energy", "edge_energy_lcf", "white_line", "soc"):
        if k in summary["means"]:
            log.info("mean %s: %.3f", k, summary["means"][k])
    log.info("%d rows; %d files written to %s", len(rows), len(written), cfg.output_dir)
    return summary


def analysis_e0_from_data(cfg: DictConfig) -> bool:
    """True when ``analysis.ranges.e0`` is null (found from the data)."""
    return cfg.analysis.ranges.get("e0") is None


def _spectrum_rows(maps: dict[str, np.ndarray], names: list[str] | None) -> list[dict[str, Any]]:
    """One row per point spectrum (maps of shape ``(N,)``)."""
    n = next(iter(maps.values())).shape[0]
    names = names or [f"spectrum_{i + 1}" for i in range(n)]
    return [{"spectrum": names[i], **{k: float(v[i]) for k, v in maps.items()}} for i in range(n)]
