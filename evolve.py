"""Evolution of 3D statistics over a series of states:
``python evolve.py manifest=series.csv output_dir=DIR [voxel_size_nm=40] [register=true] [track=true]``.

The manifest and every volume are read and checked before anything is computed; the outputs
(``evolution.csv``, ``evolution.json``, ``tests.csv``, ``units.json``, ``tracking.csv``,
``evolution.png``, ``distributions.png``) are written at the end, each atomically. See
:mod:`src.analysis.evolution_statistics` for the method.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.analysis.evolution_statistics import read_manifest, run_evolution, write_outputs
from src.cli import run_command

log = logging.getLogger("evolve")


def evolve(cfg: DictConfig) -> dict[str, Any]:
    """Run the evolution analysis of ``cfg.manifest``; write the outputs; return the result."""
    if cfg.x_axis not in ("soc", "time_h", "voltage"):
        raise ValueError(f"x_axis must be soc, time_h or voltage, got {cfg.x_axis!r}")
    entries = read_manifest(cfg.manifest)
    missing = [e.name for e in entries if not math.isfinite(getattr(e, cfg.x_axis))]
    if missing:
        raise ValueError(f"x_axis={cfg.x_axis}: manifest {cfg.manifest} gives no {cfg.x_axis} for "
                         f"states {missing}")
    voxel = cfg.voxel_size_nm
    if OmegaConf.is_list(voxel):
        voxel = list(voxel)
    registration = OmegaConf.to_container(cfg.registration, resolve=True)
    result = run_evolution(
        entries,
        class_names=[str(c) for c in cfg.class_names],
        voxel_size_nm=voxel,
        label_values=None if cfg.label_values is None else [int(v) for v in cfg.label_values],
        stats_options=OmegaConf.to_container(cfg.statistics, resolve=True),
        blocks=list(cfg.bootstrap.blocks),
        n_bootstrap=int(cfg.bootstrap.n_resamples),
        confidence=float(cfg.bootstrap.confidence),
        register=bool(cfg.register),
        registration=registration,
        track=bool(cfg.track),
        min_overlap=float(cfg.tracking.min_overlap),
        paired=cfg.tests.paired,
        n_permutations=int(cfg.tests.n_permutations),
        alpha=float(cfg.tests.alpha),
        seed=int(cfg.seed),
        progress=log.info,
    )
    patterns = None if cfg.figure_statistics is None else list(cfg.figure_statistics)
    paths = write_outputs(Path(cfg.output_dir), result, x_axis=cfg.x_axis, figure=bool(cfg.figure),
                          figure_statistics=patterns)
    if cfg.model_parameters:
        paths["pybamm_parameters"] = [str(p) for p in _parameters_per_state(cfg, result)]
    log.info("evolution of %d states written to %s", len(entries), cfg.output_dir)
    result["paths"] = paths
    return result


def _parameters_per_state(cfg: DictConfig, result: dict[str, Any]) -> list[Path]:
    """``model_parameters=true``: the PyBaMM parameter set of every state, and their series."""
    from src.analysis.model_parameters import (
        electrode_parameters,
        parameter_series,
        write_parameter_set,
    )

    e, out = cfg.electrode, Path(cfg.output_dir)
    series, written = [], []
    for state, analysis in zip(result["states"], result["analyses"], strict=True):
        params = electrode_parameters(analysis.stats, active_phase=str(e.active_phase),
                                      pore_phase=str(e.pore_phase), electrode=str(e.side), axis=int(e.axis))
        written += write_parameter_set(params, out / "pybamm", f"{state['name']}_pybamm")
        series.append((float(state[cfg.x_axis]), params))
    return written + parameter_series(series, out, str(cfg.x_axis), bool(cfg.figure))


if __name__ == "__main__":
    run_command("evolve", evolve)
