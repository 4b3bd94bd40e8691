"""3D statistics of segmented volumes:
``python analyze.py volumes=GLOB voxel_size_nm=40 [class_names=[NMC,CBD,pore]] [label_values=[..]] output_dir=DIR``.

Every volume is read and checked (3D, integer labels, values known) before anything is
computed, and all outputs are written at the end, each atomically: ``stats.csv`` (one row per
volume, columns ``<statistic>/<phase>``), ``stats.json`` (nested results, per-particle lists,
histograms, settings), ``units.json`` (unit and meaning per column) and ``stats.png``; with
``model_parameters=true`` also ``<volume>_pybamm.json`` / ``<volume>_pybamm.py``, the PyBaMM
parameter set of each electrode volume. The work is
:func:`src.analysis.volume_statistics.analyze_volumes`.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.analysis.volume_statistics import ChunkedSettings, ElectrodeSettings, analyze_volumes
from src.cli import run_command


def analyze(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Compute the statistics of every volume in ``cfg.volumes``; write the tables; return them."""
    c, e = cfg.chunked, cfg.electrode
    chunked = ChunkedSettings(chunk=int(c.chunk), cluster=c.cluster, rev_phases=tuple(str(p) for p in c.rev_phases or ()),
                              rev_axis=int(c.rev_axis)) if c.enabled else None
    electrode = ElectrodeSettings(active_phase=str(e.active_phase), pore_phase=str(e.pore_phase), side=str(e.side),
                                  axis=int(e.axis)) if cfg.model_parameters else None
    return analyze_volumes(
        OmegaConf.to_container(cfg.volumes) if OmegaConf.is_list(cfg.volumes) else str(cfg.volumes),
        OmegaConf.to_container(cfg.voxel_size_nm) if OmegaConf.is_list(cfg.voxel_size_nm) else cfg.voxel_size_nm,
        cfg.output_dir, class_names=[str(n) for n in cfg.class_names],
        label_values=None if cfg.label_values is None else [int(v) for v in cfg.label_values],
        statistics=OmegaConf.to_container(cfg.statistics, resolve=True), figure=bool(cfg.figure),
        chunked=chunked, electrode=electrode)


if __name__ == "__main__":
    run_command("analyze", analyze)
