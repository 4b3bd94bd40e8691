"""Operando XANES series: edge energy and SOC per state against time, voltage and charge.

A manifest (CSV or YAML) lists the states, each a spectral stack or a spectrum file
(a table of point spectra, or a two-column spectrum) with its time:

.. code-block:: yaml

    electrochem: cell.mpt        # optional: BioLogic EC-Lab .mpt or CSV (time, voltage, current)
    energies: energies.txt       # optional: the energies of every stack state
    states:
      - {path: state0.tif, time_h: 0.0, segmentation: seg0.tif}
      - {path: state1.tif, time_h: 1.0, segmentation: seg1.tif}

(CSV: columns ``path``, ``time_s`` or ``time_h``, optional ``name``, ``energies``,
``segmentation``). Paths are relative to the manifest. Every state is analysed with the same
code, end-members (``references=from_data``: derived once from the valid spectra of all
states pooled) and ranges: ``e0`` and the windows are resolved on the first state and kept for
all, so the edge energies compare. The electrochemistry (:func:`src.data.io.electrochem.read_electrochem`)
gives each state's voltage and the charge passed (interpolated at its time). With segmentations,
the particles of consecutive states are matched by overlap
(:func:`src.analysis.registration.match_particles`, the tracking of ``evolve.py``) and each
tracked particle's SOC is followed across the states.

Writes ``series.csv``, ``series.png`` (edge energy and SOC against time, voltage and charge),
``particle_tracks.csv`` (with segmentations), ``states/<name>/maps/*.tif`` and ``summary.json``
(with Spearman's rank correlation of the edge energy with the charge passed).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from omegaconf import DictConfig

__all__ = ["SeriesState", "read_series_manifest", "run_series"]

log = logging.getLogger("xanes")


@dataclass
class SeriesState:
    """One state of the series (paths resolved; ``time_s`` in seconds)."""

    name: str
    path: Path
    time_s: float
    energies: Path | None = None
    segmentation: Path | None = None
    row: int = 0


def read_series_manifest(path: str | Path) -> tuple[list[SeriesState], dict[str, Any]]:
    """``(states, extra)`` of a series manifest.

    ``extra`` holds the YAML's top-level ``electrochem`` / ``energies`` (resolved paths).

    Raises:
        FileNotFoundError: the manifest, or a state's file (stack, energies, segmentation), is
            missing: the message names the manifest, the row and the column.
        ValueError: a row without ``path`` or time, a time that is not a number.
    """
    from src.analysis.evolution_statistics import _manifest_rows

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"series manifest {path}: no such file")
    extra: dict[str, Any] = {}
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            for key in ("electrochem", "energies"):
                if data.get(key):
                    p = Path(str(data[key]))
                    extra[key] = p if p.is_absolute() else path.parent / p
                    if not extra[key].exists():
                        raise FileNotFoundError(f"series manifest {path}: {key} = {data[key]!r}: "
                                                f"{extra[key]} does not exist")
        rows = _manifest_rows(path)
    else:
        import csv

        with open(path, newline="", encoding="utf-8") as f:
            lines = [line for line in f if line.strip() and not line.lstrip().startswith("#")]
        rows = [{(k or "").strip(): (v or "").strip() for k, v in r.items()} for r in csv.DictReader(lines)]
    if not rows:
        raise ValueError(f"series manifest {path}: no states listed")
    states = []
    for i, row in enumerate(rows, start=1):
        where = f"series manifest {path} row {i}"
        if not row.get("path"):
            raise ValueError(f"{where}: column 'path' (the state's stack or spectrum file) is missing")
        t = None
        for col, factor in (("time_s", 1.0), ("time", 1.0), ("time_h", 3600.0)):
            if row.get(col) not in (None, ""):
                try:
                    t = float(row[col]) * factor
                except (TypeError, ValueError):
                    raise ValueError(f"{where}: column '{col}' = {row[col]!r} is not a number") from None
                break
        if t is None:
            raise ValueError(f"{where}: no time (column 'time_s' or 'time_h')")
        files = {}
        for col in ("path", "energies", "segmentation"):
            if row.get(col) in (None, ""):
                continue
            p = Path(str(row[col]))
            p = p if p.is_absolute() else path.parent / p
            if not p.exists():
                raise FileNotFoundError(f"{where}: column '{col}' = {row[col]!r}: {p} does not exist")
            files[col] = p
        states.append(SeriesState(str(row.get("name") or Path(str(row["path"])).stem), files["path"], t,
                                  files.get("energies"), files.get("segmentation"), i))
    names = [s.name for s in states]
    if len(set(names)) != len(names):
        raise ValueError(f"series manifest {path}: duplicate state names {names}; give each a 'name'")
    return sorted(states, key=lambda s: s.time_s), extra


def _read_state(state: SeriesState, energies_file: Path | None, cfg: DictConfig):
    from src.data.io.spectra import (
        is_spectra_table,
        read_energies,
        read_spectra_table,
        read_spectral_stack,
    )

    efile = state.energies or energies_file
    if efile is None and is_spectra_table(state.path):
        energies, stack, _ = read_spectra_table(state.path)
        return energies, stack
    if efile is None:
        raise ValueError(f"state {state.name} ({state.path}): a stack needs energies (manifest column "
                         "'energies', the manifest's energies, or energies=FILE)")
    energies = read_energies(efile)
    return energies, read_spectral_stack(state.path, energies.size, cfg.get("dataset"))


def run_series(cfg: DictConfig) -> dict[str, Any]:
    """The ``series=MANIFEST`` mode of ``xanes.py``; returns the summary (``summary.json``)."""
    from scipy.stats import spearmanr

    from src.analysis.particles import separate_particles
    from src.analysis.statistics_table import write_csv_atomic
    from src.data.io import to_jsonable, write_json
    from src.data.io.electrochem import read_electrochem
    from src.xanes.edge import normalize_spectra
    from src.xanes.end_members import end_members_from_data
    from src.xanes.maps import analyze, mask_edge_shape, particle_statistics
    from src.xanes.pipeline import (
        FROM_DATA,
        _analysis_config,
        load_end_member_spectra,
        load_segmentation,
    )

    states, extra = read_series_manifest(cfg.series)
    echem_file = cfg.get("electrochem") or extra.get("electrochem")
    echem = read_electrochem(echem_file) if echem_file else None  # read before any analysis
    energies_file = Path(cfg.energies) if cfg.get("energies") else extra.get("energies")
    refs, names, ref_files = load_end_member_spectra(cfg)
    from_data = refs == FROM_DATA
    analysis = _analysis_config(cfg, from_data)
    class_names = [str(c) for c in cfg.class_names]
    label_values = None if cfg.label_values is None else [int(v) for v in cfg.label_values]
    phase = None if cfg.mask_phase is None else str(cfg.mask_phase)
    out = Path(cfg.output_dir)
    if cfg.mask:
        log.warning("mask= is ignored in series mode: give each state a 'segmentation' column")

    def state_mask(state: SeriesState, stack: np.ndarray) -> np.ndarray:
        if state.segmentation is None:
            return np.ones(stack.shape[1:], bool)
        return load_segmentation(state.segmentation, stack.shape[1:], class_names, phase, label_values)[0]

    basis = None
    if from_data:  # end-members from the pooled valid spectra of all states
        refs = None
        pooled_norm, pooled_edge, first = [], [], None
        for k, state in enumerate(states):
            energies, stack = _read_state(state, energies_file, cfg)
            if first is None:
                first = energies
            elif energies.shape != first.shape or not np.allclose(energies, first):
                raise ValueError(f"references=from_data in a series needs one energy list; state {state.name} "
                                 f"has {energies.size} energies {energies[0]:.1f}-{energies[-1]:.1f} eV, the first "
                                 f"state {first.size}")
            mask = state_mask(state, stack)
            res = analyze(energies, stack, mask, None, None, analysis)
            if k == 0:
                analysis.ranges, analysis.fit_to_scan = res.ranges, False
            flat = stack.reshape(energies.size, -1)
            idx = np.flatnonzero((res.maps["valid"].astype(bool) & mask).ravel())
            sub = idx[:: max(1, idx.size * len(states) // 50000)]
            pooled_norm.append(normalize_spectra(energies, flat[:, sub], analysis.ranges,
                                                 mask_edge_shape(energies, flat, idx, analysis.ranges)).norm)
            pooled_edge.append(res.maps["edge_energy"].ravel()[sub])
        basis = end_members_from_data(np.concatenate(pooled_norm, 1), np.concatenate(pooled_edge),
                                      fraction=float(cfg.from_data.fraction), iterations=int(cfg.from_data.iterations))
        ref_files = {"method": "from_data: extreme states pooled over the series' states", **ref_files}
    rows, regions, particle_rows = [], [], []
    for k, state in enumerate(states):
        energies, stack = _read_state(state, energies_file, cfg)
        mask = state_mask(state, stack)
        result = analyze(energies, stack, mask, refs, names or None, analysis, basis=basis)
        if k == 0:  # the same e0 and windows for every state
            analysis.ranges, analysis.fit_to_scan = result.ranges, False
            for note in result.notes:
                log.info("ranges: %s", note)
        maps = result.maps
        valid = maps["valid"].astype(bool) & mask
        row: dict[str, Any] = {"state": state.name, "time_s": state.time_s, "time_h": state.time_s / 3600.0,
                               "valid_voxels": int(valid.sum())}
        for key in ("edge_energy", "edge_energy_lcf", "white_line", "soc"):
            if key in maps:
                v = maps[key][valid]
                v = v[np.isfinite(v)]
                row[f"{key}_mean"] = float(v.mean()) if v.size else math.nan
                row[f"{key}_std"] = float(v.std()) if v.size else math.nan
        rows.append(row)
        from src.data.io import write_tiff

        for key, v in maps.items():
            write_tiff(out / "states" / state.name / "maps" / f"{key}.tif", v)
        if state.segmentation is not None and stack.ndim == 4:
            hulls, _ = separate_particles(mask, min_distance=int(cfg.particles.min_distance))
            ids = np.where(mask, hulls, 0).astype(np.int32)
            p_rows, _ = particle_statistics(maps, ids, n_shells=int(cfg.particles.n_shells),
                                            min_voxels=int(cfg.particles.min_voxels))
            regions.append(ids)
            particle_rows.append({r["particle"]: r for r in p_rows})
        log.info("state %s (t = %.2f h): edge %.3f eV%s", state.name, state.time_s / 3600.0,
                 row.get("edge_energy_mean", math.nan),
                 f", SOC {row['soc_mean']:.3f}" if "soc_mean" in row else "")
    if echem is not None:
        t = np.array([r["time_s"] for r in rows])
        if t.min() < echem["time_s"][0] - 1 or t.max() > echem["time_s"][-1] + 1:
            log.warning("states at %.0f-%.0f s lie outside the electrochemistry's %.0f-%.0f s: the end values "
                        "are used there", t.min(), t.max(), echem["time_s"][0], echem["time_s"][-1])
        for r, v, q in zip(rows, np.interp(t, echem["time_s"], echem["voltage_V"]),
                           np.interp(t, echem["time_s"], echem["charge_mAh"]), strict=True):
            r["voltage_V"], r["charge_mAh"] = float(v), float(q)
    tracks = _tracks(regions, particle_rows, [s.name for s in states]) if len(regions) == len(states) > 1 else []
    corr: dict[str, Any] = {}
    for x in ("time_s", "charge_mAh", "voltage_V"):
        for y in ("edge_energy_mean", "soc_mean"):
            pairs = np.array([(r.get(x, math.nan), r.get(y, math.nan)) for r in rows], float)
            ok = np.isfinite(pairs).all(1)
            if ok.sum() >= 3 and np.ptp(pairs[ok, 0]) > 0 and np.ptp(pairs[ok, 1]) > 0:
                res = spearmanr(pairs[ok, 0], pairs[ok, 1])
                corr[f"{y}_vs_{x}"] = {"spearman_rho": float(res.statistic), "p_value": float(res.pvalue),
                                       "n": int(ok.sum())}
    write_csv_atomic(out / "series.csv", rows, first=("state",))
    if tracks:
        write_csv_atomic(out / "particle_tracks.csv", tracks, first=("track", "state"))
    if cfg.figure:
        _series_figure(out / "series.png", rows)
    summary = {"series": str(Path(cfg.series).resolve()), "electrochem": str(echem_file) if echem_file else None,
               "states": rows, "ranges_used": analysis.ranges.as_dict(), "fit_ranges": analysis.ranges.describe(),
               "references": ref_files, "correlations": corr,
               "tracked_particles": len({t["track"] for t in tracks})}
    write_json(out / "summary.json", to_jsonable(summary))
    for key, c in corr.items():
        log.info("%s: Spearman rho %.3f (p %.3g, n=%d)", key, c["spearman_rho"], c["p_value"], c["n"])
    return summary


def _tracks(regions: list[np.ndarray], particle_rows: list[dict[int, dict[str, Any]]],
            names: list[str]) -> list[dict[str, Any]]:
    """Chains of particles matched between consecutive states → one row per (track, state)."""
    from src.analysis.registration import match_particles

    chains: dict[int, list[int]] = {int(i): [int(i)] for i in particle_rows[0]}
    for k in range(1, len(regions)):
        m = match_particles(regions[k - 1], regions[k])
        nxt = dict(zip(m["id_a"].tolist(), m["id_b"].tolist(), strict=True))
        for chain in chains.values():
            if len(chain) == k and chain[-1] in nxt:
                chain.append(nxt[chain[-1]])
    out = []
    for track, chain in chains.items():
        if len(chain) != len(regions):
            continue
        for k, pid in enumerate(chain):
            r = particle_rows[k].get(pid, {})
            out.append({"track": track, "state": names[k], "particle": pid,
                        **{c: r.get(c, math.nan) for c in ("voxels", "soc_mean", "soc_std", "edge_energy_mean",
                                                           "soc_core_minus_shell") if c in r}})
    return out


def _series_figure(path: Path, rows: list[dict[str, Any]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from src.data.io.figures import save_figure

    xs = [(x, label) for x, label in (("time_h", "time (h)"), ("voltage_V", "voltage (V)"),
                                      ("charge_mAh", "charge passed (mA·h)")) if x in rows[0]]
    ys = [(y, label) for y, label in (("edge_energy_mean", "edge energy (eV, half jump)"),
                                      ("soc_mean", "SOC")) if y in rows[0]]
    fig, axes = plt.subplots(len(ys), len(xs), figsize=(3.6 * len(xs), 2.8 * len(ys)), squeeze=False)
    for i, (y, ylabel) in enumerate(ys):
        for j, (x, xlabel) in enumerate(xs):
            ax = axes[i, j]
            ax.errorbar([r[x] for r in rows], [r[y] for r in rows],
                        yerr=[r.get(y.replace("_mean", "_std"), 0.0) for r in rows], marker="o", ms=4, capsize=2)
            ax.set_xlabel(xlabel)
            ax.set_ylabel(ylabel)
    fig.tight_layout()
    return save_figure(fig, path)
