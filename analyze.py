"""3D statistics of segmented volumes:
``python analyze.py volumes=GLOB voxel_size_nm=40 [class_names=[NMC,CBD,pore]] [label_values=[..]] output_dir=DIR``.

Every volume is read and checked (3D, integer labels, values known) before anything is
computed, and all outputs are written at the end, each atomically: ``stats.csv`` (one row per
volume, columns ``<statistic>/<phase>``), ``stats.json`` (nested results, per-particle lists,
histograms, settings), ``units.json`` (unit and meaning per column) and ``stats.png``; with
``model_parameters=true`` also ``<volume>_pybamm.json`` / ``<volume>_pybamm.py``, the PyBaMM
parameter set of each electrode volume.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.analysis.model_parameters import electrode_parameters, write_parameter_set
from src.analysis.morphology import check_voxel_size, compute_statistics, load_label_volume
from src.analysis.statistics_table import write_statistics
from src.cli import run_command
from src.data.io import list_images

log = logging.getLogger("analyze")


def analyze(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Compute the statistics of every volume in ``cfg.volumes``; write the tables; return them."""
    class_names = [str(c) for c in cfg.class_names]
    label_values = None if cfg.label_values is None else [int(v) for v in cfg.label_values]
    voxel_nm = check_voxel_size(cfg.voxel_size_nm if not OmegaConf.is_list(cfg.voxel_size_nm)
                                else list(cfg.voxel_size_nm))
    options = OmegaConf.to_container(cfg.statistics, resolve=True)
    paths = list_images(cfg.volumes)
    names = [p.stem for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"volumes {cfg.volumes!r} give duplicate names {names}; rename them")
    if cfg.chunked.enabled:
        return _analyze_chunked(cfg, paths, names, class_names, label_values, float(voxel_nm))
    for path in paths:  # check every input before computing or writing anything
        load_label_volume(path, class_names, label_values)
    results: dict[str, dict[str, Any]] = {}
    for path, name in zip(paths, names, strict=True):
        labels = load_label_volume(path, class_names, label_values)
        log.info("analysing %s %s", path, labels.shape)
        stats = compute_statistics(labels, class_names, voxel_nm, progress=lambda k: log.info("  %s", k),
                                   **options)
        stats["source"] = str(Path(path).resolve())
        results[name] = stats
        log.info("  done in %.1f s", sum(stats["timings_s"].values()))
        if cfg.model_parameters:
            e = cfg.electrode
            params = electrode_parameters(stats, active_phase=str(e.active_phase), pore_phase=str(e.pore_phase),
                                          electrode=str(e.side), axis=int(e.axis))
            for path_out in write_parameter_set(params, Path(cfg.output_dir), f"{name}_pybamm"):
                log.info("  PyBaMM parameters: %s", path_out)
    write_statistics(Path(cfg.output_dir), results, class_names, voxel_nm, options, label_values, cfg.figure)
    log.info("statistics of %d volume(s) written to %s", len(results), cfg.output_dir)
    return results


def _analyze_chunked(cfg: DictConfig, paths: list[Path], names: list[str], class_names: list[str],
                     label_values: list[int] | None, voxel_nm: float) -> dict[str, dict[str, Any]]:
    """``chunked.enabled=true``: volumes larger than memory, read and analysed chunk by chunk."""
    from src.analysis.chunked import chunked_statistics

    c = cfg.chunked
    results: dict[str, dict[str, Any]] = {}
    for path, name in zip(paths, names, strict=True):
        log.info("analysing %s chunk by chunk (chunk %d, %s)", path, int(c.chunk),
                 f"cluster {c.cluster}" if c.cluster else "threads")
        stats = chunked_statistics(
            path, class_names, voxel_nm, label_values=label_values, chunk=int(c.chunk),
            particle_phase=cfg.statistics.particle_phase, thickness_phases=list(cfg.statistics.thickness_phases or []),
            rev_phases=list(c.rev_phases or []), rev_axis=int(c.rev_axis), surface_sigma=float(cfg.statistics.surface_sigma),
            cluster=c.cluster)
        results[name] = stats
    options = OmegaConf.to_container(cfg.chunked, resolve=True)
    write_statistics(Path(cfg.output_dir), results, class_names, voxel_nm, options, label_values, False)
    log.info("chunked statistics of %d volume(s) written to %s", len(results), cfg.output_dir)
    return results


if __name__ == "__main__":
    run_command("analyze", analyze)
