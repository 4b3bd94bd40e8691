"""Flatten :func:`src.analysis.morphology.compute_statistics` results into table rows.

Columns are named ``<statistic>/<phase>`` (``volume_fraction/NMC``,
``specific_surface_area_um-1/CBD``, ``interface_area_um2/NMC-CBD``,
``surface_fraction_to_CBD/NMC``, ``tortuosity_factor_z/pore``, ``d50_um/NMC`` ...);
:func:`units` gives each column's unit for a sidecar JSON. Writers are atomic (temp file in
the target folder, then ``os.replace``): readers never see half a file.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from src.data.io import write_json, write_text
from src.data.io.figures import save_figure

__all__ = ["STATISTIC_UNITS", "flatten_statistics", "units", "write_csv_atomic", "write_statistics"]

# unit and meaning of each statistic (the part of a column name before "/")
STATISTIC_UNITS: dict[str, tuple[str, str]] = {
    "volume_fraction": ("1", "phase voxels / all voxels"),
    "surface_area_um2": ("µm²", "marching-cubes area of the phase surface (outer faces excluded)"),
    "specific_surface_area_um-1": ("µm⁻¹", "phase surface area / total volume"),
    "surface_to_volume_um-1": ("µm⁻¹", "phase surface area / phase volume (3/r for a sphere)"),
    "interface_area_um2": ("µm²", "area of the interface between the two phases A-B"),
    "surface_fraction_to": ("1", "share of the phase's surface facing the named phase"),
    "particle_count": ("1", "separated particles used in the distribution (size and border filters)"),
    "particle_count_all": ("1", "all separated particles"),
    "particle_count_border": ("1", "particles touching a face of the volume"),
    "mean_diameter_um": ("µm", "number-mean equivalent-sphere diameter of the particle hulls"),
    "mean_sphericity": ("1", "number-mean sphericity π^(1/3)(6V)^(2/3)/A from each particle's mesh"),
    "crack_porosity": ("1", "non-phase voxels enclosed in the particle hulls / hull voxels"),
    "d_um": ("µm", "volume-weighted quantile of equivalent-sphere diameter"),
    "d_number_um": ("µm", "number-weighted quantile of equivalent-sphere diameter"),
    "percolating_fraction": ("1", "phase voxels in 6-connected clusters joining both faces of the axis"),
    "tortuosity_factor": ("1", "τ = ε / (D_eff/D0) along the axis (inf: no path; taufactor's definition)"),
    "relative_diffusivity": ("1", "D_eff/D0 along the axis"),
    "tortuosity_converged": ("1", "1 if the solve met its convergence criterion (layer fluxes agree)"),
    "rev_tortuosity_factor": ("1", "τ of the largest central cube of the REV curve (chunked analysis)"),
    "rev_relative_change": ("1", "relative change of τ between the two largest REV cubes"),
    "component_count": ("1", "6-connected components of the phase (chunked analysis: no watershed split)"),
    "component_d50_um": ("µm", "volume-weighted median equivalent-sphere diameter of the components"),
    "local_thickness_mean_um": ("µm", "volume-mean local thickness (largest inscribed ball diameter)"),
    "local_thickness_d50_um": ("µm", "volume-median local thickness"),
    "time_s": ("s", "wall time of the statistic (whole volume, all phases)"),
}


def _number(value: Any) -> float:
    return float(value) if value is not None else math.nan


def flatten_statistics(stats: Mapping[str, Any]) -> dict[str, float]:
    """One flat row ``{"<statistic>/<phase>": float}`` of a nested statistics dict.

    Per-particle lists and histograms stay in the nested dict (``stats.json``); timings become
    ``time_s/<statistic>``.
    """
    row: dict[str, float] = {}
    for phase, value in stats.get("volume_fraction", {}).items():
        row[f"volume_fraction/{phase}"] = _number(value)
    surfaces = stats.get("surfaces", {})
    for key in ("surface_area_um2", "specific_surface_area_um-1", "surface_to_volume_um-1",
                "interface_area_um2"):
        for phase, value in surfaces.get(key, {}).items():
            row[f"{key}/{phase}"] = _number(value)
    for phase, others in surfaces.get("surface_fraction", {}).items():
        for other, value in others.items():
            row[f"surface_fraction_to_{other}/{phase}"] = _number(value)
    for phase, part in stats.get("particles", {}).items():
        for key, value in part.items():
            if not isinstance(value, Mapping | list):
                row[f"{key}/{phase}"] = _number(value)
    for phase, per_axis in stats.get("connectivity", {}).items():
        for axis, value in per_axis.items():
            row[f"percolating_fraction_{axis}/{phase}"] = _number(value)
    for phase, per_axis in stats.get("tortuosity", {}).items():
        for axis, res in per_axis.items():
            row[f"tortuosity_factor_{axis}/{phase}"] = _number(res["tortuosity_factor"])
            row[f"relative_diffusivity_{axis}/{phase}"] = _number(res["relative_diffusivity"])
            row[f"tortuosity_converged_{axis}/{phase}"] = float(bool(res["converged"]))
    for phase, res in stats.get("local_thickness", {}).items():
        row[f"local_thickness_mean_um/{phase}"] = _number(res["mean_um"])
        row[f"local_thickness_d50_um/{phase}"] = _number(res["d50_um"])
    for phase, part in stats.get("components", {}).items():
        row[f"component_count/{phase}"] = _number(part["count"])
        row[f"component_d50_um/{phase}"] = _number(part["d50_um"])
    for phase, rev in stats.get("rev_tortuosity", {}).items():
        row[f"rev_tortuosity_factor/{phase}"] = _number(rev["tortuosity_factor"][-1])
        row[f"rev_relative_change/{phase}"] = _number(rev["relative_change"])
    for key, value in stats.get("timings_s", {}).items():
        row[f"time_s/{key}"] = _number(value)
    return row


def _statistic_key(column: str) -> str:
    stat = column.split("/", 1)[0]
    if stat in STATISTIC_UNITS:
        return stat
    for prefix in ("surface_fraction_to", "percolating_fraction", "rev_tortuosity_factor", "tortuosity_factor",
                   "relative_diffusivity", "tortuosity_converged"):
        if stat.startswith(prefix + "_"):
            return prefix
    if stat.startswith("d") and stat.endswith("_number_um"):
        return "d_number_um"
    if stat.startswith("d") and stat.endswith("_um") and stat[1:-3].isdigit():
        return "d_um"
    raise KeyError(f"unknown statistic column {column!r}")


def units(columns: Iterable[str]) -> dict[str, dict[str, str]]:
    """``{column: {"unit": ..., "description": ...}}`` for the given flat column names."""
    out = {}
    for column in columns:
        unit, description = STATISTIC_UNITS[_statistic_key(column)]
        out[column] = {"unit": unit, "description": description}
    return out


def write_csv_atomic(path: str | os.PathLike[str], rows: Sequence[Mapping[str, Any]],
                     first: Sequence[str] = ("volume",)) -> list[str]:
    """Write dict rows as CSV atomically; columns = ``first`` then the union in first-seen order.

    Missing values are empty cells. Returns the column names.
    """
    columns = list(first)
    for row in rows:
        columns += [c for c in row if c not in columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    write_text(path, buffer.getvalue())
    return columns


def save_statistics_figure(path: Path, results: dict[str, dict[str, Any]], class_names: list[str]) -> None:
    """Bar chart of volume fractions per volume and the particle size distributions (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_vf, ax_psd) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(results)
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(class_names))
    for k, name in enumerate(names):
        vf = results[name]["volume_fraction"]
        ax_vf.bar(x + k * width, [vf[c] for c in class_names], width, label=name)
        for phase, part in results[name].get("particles", {}).items():
            d = np.asarray(part["particles"]["diameter_um"])[part["particles"]["used_in_distribution"]]
            if d.size:
                ax_psd.hist(d, bins=30, weights=d**3 / np.sum(d**3), histtype="step",
                            label=f"{name} ({phase}, n={d.size})")
    ax_vf.set_xticks(x + width * (len(names) - 1) / 2, class_names)
    ax_vf.set_ylabel("volume fraction")
    ax_psd.set_xlabel("equivalent-sphere diameter (µm)")
    ax_psd.set_ylabel("volume fraction of particles")
    ax_psd.set_title("particle size distribution (volume-weighted)")
    for ax in (ax_vf, ax_psd):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


def write_statistics(
    out_dir: Path,
    results: Mapping[str, Mapping[str, Any]],
    class_names: Sequence[str],
    voxel_size_nm: float,
    settings: Mapping[str, Any],
    label_values: Sequence[int] | None = None,
    figure: bool = True,
) -> None:
    """Write the statistics table, its units, the nested results and a figure to ``out_dir``.

    The files: ``stats.csv`` (one row per volume, columns ``<statistic>/<phase>``),
    ``units.json``, ``stats.json`` (nested results and settings) and, with ``figure``,
    ``stats.png``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = [{"volume": name, **flatten_statistics(stats)} for name, stats in results.items()]
    columns = write_csv_atomic(out_dir / "stats.csv", rows)
    write_json(out_dir / "units.json", {"voxel_size_nm": voxel_size_nm, "columns": units(columns[1:])})
    write_json(out_dir / "stats.json", {"class_names": list(class_names), "label_values": label_values,
                                               "settings": dict(settings), "volumes": dict(results)})
    if figure:
        save_statistics_figure(out_dir / "stats.png", dict(results), list(class_names))
