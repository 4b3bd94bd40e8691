"""The statistics of label-volume files: read and check them all, compute, write the tables.

This is what ``analyze.py`` runs: in memory (:func:`src.analysis.morphology.compute_statistics`)
or chunk by chunk on dask (:func:`src.analysis.chunked.chunked_statistics`), optionally with the
PyBaMM parameter set of every electrode volume (:mod:`src.analysis.model_parameters`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from src.analysis.model_parameters import ElectrodeSettings, write_parameter_set
from src.analysis.morphology import check_voxel_size, compute_statistics, load_label_volume
from src.analysis.statistics_table import write_statistics
from src.analysis.surfaces import SURFACE_SIGMA
from src.data.io import list_images

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChunkedSettings:
    """Volumes larger than memory, analysed chunk by chunk on dask.

    Args:
        chunk: chunk side and slab thickness (voxels).
        cluster: address of a running dask scheduler; None = threads.
        rev_phases: phases whose tortuosity is computed on central cubes of growing size.
        rev_axis: the axis of that tortuosity.
    """

    chunk: int = 128
    cluster: str | None = None
    rev_phases: tuple[str, ...] = ("pore",)
    rev_axis: int = 0


def analyze_volumes(
    volumes: str | Sequence[str],
    voxel_size_nm: float | Sequence[float],
    output_dir: str | Path,
    class_names: Sequence[str] = ("NMC", "CBD", "pore"),
    label_values: Sequence[int] | None = None,
    statistics: Mapping[str, Any] | None = None,
    figure: bool = True,
    chunked: ChunkedSettings | None = None,
    electrode: ElectrodeSettings | None = None,
) -> dict[str, dict[str, Any]]:
    """Compute the statistics of every volume; write ``stats.csv``/``.json``, ``units.json``, ``stats.png``.

    Every volume is read and checked before anything is computed; the tables are written at the
    end, each atomically.

    Args:
        volumes: file, folder or glob (or a list of them) of (z, y, x) label volumes.
        voxel_size_nm: voxel edge in nm (one value, or (z, y, x)).
        output_dir: the output folder.
        class_names: the phases, in label order.
        label_values: stored value of each class; None = 0..n-1.
        statistics: keyword options of :func:`compute_statistics` (``conf/statistics/``).
        figure: also write ``stats.png`` (in-memory runs).
        chunked: analyse chunk by chunk with these settings; None = in memory.
        electrode: also write ``<volume>_pybamm.json``/``.py`` with these settings; None = no.

    Returns:
        ``{volume name: statistics}``.
    """
    names_in = [str(c) for c in class_names]
    values = None if label_values is None else [int(v) for v in label_values]
    voxel_nm = check_voxel_size(voxel_size_nm)
    options = dict(statistics or {})
    paths = list_images(volumes)
    names = [p.stem for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"volumes {volumes!r} give duplicate names {names}; rename them")
    out = Path(output_dir)
    if chunked is not None:
        return _analyze_chunked(paths, names, names_in, values, float(voxel_nm), options, chunked, out)
    for path in paths:  # check every input before computing or writing anything
        load_label_volume(path, names_in, values)
    results: dict[str, dict[str, Any]] = {}
    for path, name in zip(paths, names, strict=True):
        labels = load_label_volume(path, names_in, values)
        log.info("analysing %s %s", path, labels.shape)
        start = time.perf_counter()
        stats = compute_statistics(labels, names_in, voxel_nm, progress=lambda k: log.info("  %s", k), **options)
        stats["source"] = str(Path(path).resolve())
        results[name] = stats
        log.info("  done in %.1f s", time.perf_counter() - start)  # the statistics' times overlap
        if electrode is not None:
            for written in write_parameter_set(electrode.parameters(stats), out, f"{name}_pybamm"):
                log.info("  PyBaMM parameters: %s", written)
    write_statistics(out, results, names_in, voxel_nm, options, values, figure)
    log.info("statistics of %d volume(s) written to %s", len(results), out)
    return results


def _analyze_chunked(paths: list[Path], names: list[str], class_names: list[str], label_values: list[int] | None,
                     voxel_nm: float, options: dict[str, Any], settings: ChunkedSettings,
                     out: Path) -> dict[str, dict[str, Any]]:
    """The chunked branch of :func:`analyze_volumes`."""
    from src.analysis.chunked import chunked_statistics

    results: dict[str, dict[str, Any]] = {}
    for path, name in zip(paths, names, strict=True):
        log.info("analysing %s chunk by chunk (chunk %d, %s)", path, settings.chunk,
                 f"cluster {settings.cluster}" if settings.cluster else "threads")
        results[name] = chunked_statistics(
            path, class_names, voxel_nm, label_values=label_values, chunk=settings.chunk,
            particle_phase=options.get("particle_phase", "NMC"),
            thickness_phases=list(options.get("thickness_phases") or []),
            rev_phases=list(settings.rev_phases), rev_axis=settings.rev_axis,
            surface_sigma=float(options.get("surface_sigma", SURFACE_SIGMA)), cluster=settings.cluster)
    table_options = {**asdict(settings), "rev_phases": list(settings.rev_phases)}
    write_statistics(out, results, class_names, voxel_nm, table_options, label_values, False)
    log.info("chunked statistics of %d volume(s) written to %s", len(results), out)
    return results
