"""Evolution of 3D statistics over a series of states:
``python evolve.py manifest=series.csv output_dir=DIR [voxel_size_nm=40] [register=true] [track=true]``.

The manifest and every volume are read and checked before anything is computed; the outputs
(``evolution.csv``, ``evolution.json``, ``tests.csv``, ``units.json``, ``tracking.csv``,
``evolution.png``, ``distributions.png``) are written at the end, each atomically. The work is
:func:`src.analysis.evolution_statistics.evolve_series` (see that module for the method).
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.analysis.evolution_statistics import evolve_series
from src.analysis.model_parameters import ElectrodeSettings
from src.cli import run_command

log = logging.getLogger("evolve")


def evolve(cfg: DictConfig) -> dict[str, Any]:
    """Run the evolution analysis of ``cfg.manifest``; write the outputs; return the result."""
    e = cfg.electrode
    electrode = ElectrodeSettings(active_phase=str(e.active_phase), pore_phase=str(e.pore_phase), side=str(e.side),
                                  axis=int(e.axis)) if cfg.model_parameters else None
    return evolve_series(
        cfg.manifest, cfg.output_dir, x_axis=str(cfg.x_axis), figure=bool(cfg.figure),
        figure_statistics=None if cfg.figure_statistics is None else list(cfg.figure_statistics),
        electrode=electrode,
        class_names=[str(c) for c in cfg.class_names],
        voxel_size_nm=list(cfg.voxel_size_nm) if OmegaConf.is_list(cfg.voxel_size_nm) else cfg.voxel_size_nm,
        label_values=None if cfg.label_values is None else [int(v) for v in cfg.label_values],
        stats_options=OmegaConf.to_container(cfg.statistics, resolve=True),
        blocks=list(cfg.bootstrap.blocks), n_bootstrap=int(cfg.bootstrap.n_resamples),
        confidence=float(cfg.bootstrap.confidence), register=bool(cfg.register),
        registration=OmegaConf.to_container(cfg.registration, resolve=True), track=bool(cfg.track),
        min_overlap=float(cfg.tracking.min_overlap), paired=cfg.tests.paired,
        n_permutations=int(cfg.tests.n_permutations), alpha=float(cfg.tests.alpha), seed=int(cfg.seed),
        progress=log.info)


if __name__ == "__main__":
    run_command("evolve", evolve)
