"""How the 3D statistics of an electrode change over a series of states (SOC, voltage, time).

A *manifest* (CSV or YAML) lists the states: ``path`` (label volume, relative paths resolved
against the manifest's folder), ``soc`` (0..1) and optionally ``voltage`` (V), ``time_h``,
``name``, ``voxel_size_nm``. :func:`run_evolution` then

1. optionally registers the states rigidly (translation by phase correlation on the particle
   phase, :mod:`~src.analysis.registration`) and crops all of them to the common region;
2. computes every statistic of each state on the whole volume
   (:func:`~src.analysis.morphology.compute_statistics`, columns ``<statistic>/<phase>`` of
   :func:`~src.analysis.statistics_table.flatten_statistics`) plus
   ``particle_volume_fraction/<phase>`` (Σ particle hull volume / volume);
3. gives each value a bootstrap confidence interval by **sub-volume resampling**: the volume
   is cut into ``blocks`` (default 3×3×3); voxel and surface statistics are computed per block,
   particle statistics are recomputed from the whole-volume particles assigned to blocks by
   centroid; blocks are resampled with replacement ``n_bootstrap`` times and the interval is
   the whole-volume value + (bootstrap percentiles − the all-blocks value) ("basic shift",
   so per-block edge bias cancels). Tortuosity has no interval (one whole-volume solve);
4. tests the change between consecutive states: two-sample Kolmogorov–Smirnov on the particle
   size distributions, permutation tests on the mean of per-particle quantities (diameter,
   volume, sphericity, crack porosity) and of every per-block statistic (paired sign-flip
   permutations when both states share the block grid), Holm-adjusted per pair of states;
5. optionally tracks particles between consecutive (aligned) states by overlap: per-particle
   volume change and crack porosity change, with paired permutation tests (median log volume
   ratio; mean crack-porosity change) over the tracked particles away from the faces.

:func:`write_outputs` writes ``evolution.csv`` (one row per state: metadata, each statistic,
``<column>/ci_low``, ``<column>/ci_high``), ``evolution.json`` (all of it, nested, with the
distributions and settings), ``tests.csv``, ``units.json``, ``tracking.csv`` (with tracking),
``evolution.png`` (statistics vs SOC/time with error bars) and ``distributions.png``.
"""

from __future__ import annotations

import csv
import fnmatch
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from src.analysis.model_parameters import ElectrodeSettings, parameters_per_state
from src.analysis.morphology import (
    QUANTILES,
    check_voxel_size,
    compute_statistics,
    load_label_volume,
)
from src.analysis.particles import separate_particles, weighted_quantiles
from src.analysis.registration import common_crop, register_series, track_particles
from src.analysis.statistics_table import (
    flatten_statistics,
    units,
    write_csv_atomic,
)
from src.data.io import write_json
from src.data.io.figures import save_figure

__all__ = ["ManifestEntry", "StateAnalysis", "analyse_state", "block_slices", "bootstrap_intervals",
           "check_x_axis", "compare_states", "evolve_series", "particle_summary", "read_manifest",
           "run_evolution", "write_outputs"]

log = logging.getLogger(__name__)

NUMERIC_COLUMNS = ("soc", "voltage", "time_h", "voxel_size_nm")
EXTENSIVE = ("surface_area_um2", "interface_area_um2")  # summed over blocks, not averaged
PARTICLE_QUANTITIES = ("diameter_um", "volume_um3", "sphericity", "crack_porosity")
DERIVED_UNITS = {
    "particle_volume_fraction": ("1", "Σ particle hull volume (cracks included) / total volume"),
    "tracked_volume_change_percent": ("%", "median hull-volume change of the particles tracked "
                                           "from the previous state (away from the faces)"),
    "tracked_crack_porosity_change": ("1", "median crack-porosity change of the particles "
                                           "tracked from the previous state"),
}
DEFAULT_FIGURE_STATISTICS = (
    "volume_fraction/*", "particle_volume_fraction/*", "crack_porosity/*", "d50_um/*",
    "mean_diameter_um/*", "mean_sphericity/*", "specific_surface_area_um-1/*",
    "surface_fraction_to_CBD/NMC", "surface_fraction_to_pore/NMC", "tortuosity_factor_*/pore",
    "local_thickness_mean_um/*", "tracked_volume_change_percent/*",
)


# --------------------------------------------------------------------------- manifest, input
@dataclass
class ManifestEntry:
    """One state of a series. ``row``: 1-based entry in the manifest (CSV line = row + 1)."""

    name: str
    path: Path
    soc: float
    voltage: float = math.nan  # V
    time_h: float = math.nan
    voxel_size_nm: float = math.nan
    row: int = 0


def _manifest_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8") as f:
            lines = [line for line in f if line.strip() and not line.lstrip().startswith("#")]
        reader = csv.DictReader(lines)
        rows = [{(k or "").strip(): (v.strip() if isinstance(v, str) else v)
                 for k, v in row.items()} for row in reader]
        header = [h.strip() for h in (reader.fieldnames or [])]
        for column in ("path", "soc"):
            if column not in header:
                raise ValueError(f"manifest {path}: missing column '{column}' (columns: {header}); "
                                 "needed: path, soc; optional: name, voltage, time_h, voxel_size_nm")
        return rows
    if suffix in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            raise ValueError(f"manifest {path}: invalid YAML ({exc})") from exc
        if isinstance(data, Mapping):
            data = data.get("states")
        if not isinstance(data, list) or not all(isinstance(r, Mapping) for r in data):
            raise ValueError(f"manifest {path}: expected a list of states (mappings), or a "
                             "mapping with a 'states' list")
        return [dict(r) for r in data]
    raise ValueError(f"manifest {path}: unsupported extension '{path.suffix}' (use .csv or .yaml)")


def read_manifest(path: str | os.PathLike[str]) -> list[ManifestEntry]:
    """Read and check a series manifest; errors name the file, the row and the column.

    Raises FileNotFoundError when the manifest or a state's volume is missing, ValueError for a
    missing column, a non-numeric value, an SOC outside [0, 1] or a duplicate name.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest {path}: no such file")
    rows = _manifest_rows(path)
    if not rows:
        raise ValueError(f"manifest {path}: no states listed")
    entries: list[ManifestEntry] = []
    for i, row in enumerate(rows, start=1):
        where = f"manifest {path} row {i}" + (f" (name={row['name']})" if row.get("name") else "")
        for column in ("path", "soc"):
            if row.get(column) in (None, ""):
                raise ValueError(f"{where}: column '{column}' is missing or empty")
        values: dict[str, float] = {}
        for column in NUMERIC_COLUMNS:
            raw = row.get(column)
            if raw in (None, ""):
                values[column] = math.nan
                continue
            try:
                values[column] = float(raw)
            except (TypeError, ValueError):
                raise ValueError(f"{where}: column '{column}' = {raw!r} is not a number") from None
            if not math.isfinite(values[column]):
                raise ValueError(f"{where}: column '{column}' = {raw!r} is not finite")
        if not 0.0 <= values["soc"] <= 1.0:
            raise ValueError(f"{where}: column 'soc' = {row['soc']!r} is outside 0..1 "
                             "(state of charge as a fraction)")
        volume = Path(str(row["path"]))
        if not volume.is_absolute():
            volume = path.parent / volume
        if not volume.exists():
            raise FileNotFoundError(f"{where}: column 'path' = {row['path']!r}: {volume} does "
                                    "not exist")
        name = str(row.get("name") or Path(str(row["path"])).stem)
        entries.append(ManifestEntry(name, volume, values["soc"], values["voltage"],
                                     values["time_h"], values["voxel_size_nm"], i))
    names = [e.name for e in entries]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"manifest {path}: duplicate state names {duplicates}; give each row a "
                         "unique 'name'")
    return entries


# --------------------------------------------------------------------------- per state
def block_slices(shape: Sequence[int], blocks: Sequence[int]) -> list[tuple[slice, ...]]:
    """Slices of a (z, y, x) grid cut into ``blocks[0] × blocks[1] × blocks[2]`` near-equal blocks."""
    blocks = [int(b) for b in blocks]
    if len(blocks) != 3 or min(blocks) < 1 or np.prod(blocks) < 2:
        raise ValueError(f"blocks must be three integers >= 1 giving >= 2 blocks, got {blocks}")
    edges = [np.linspace(0, n, b + 1).round().astype(int) for n, b in zip(shape, blocks, strict=True)]
    if any(np.diff(e).min() < 8 for e in edges):
        raise ValueError(f"blocks {blocks} are too many for a volume of shape {tuple(shape)}: "
                         "each block needs >= 8 voxels per axis")
    return [(slice(ez[i], ez[i + 1]), slice(ey[j], ey[j + 1]), slice(ex[k], ex[k + 1]))
            for ez, ey, ex in [edges]
            for i in range(len(ez) - 1) for j in range(len(ey) - 1) for k in range(len(ex) - 1)]


def _block_index(centroid_vox: np.ndarray, shape: Sequence[int], blocks: Sequence[int]) -> np.ndarray:
    """Block index (row-major, as :func:`block_slices`) of points (N, 3) in voxels."""
    idx = np.zeros(len(centroid_vox), np.int64)
    for axis, (n, b) in enumerate(zip(shape, blocks, strict=True)):
        edges = np.linspace(0, n, int(b) + 1).round()
        k = np.clip(np.searchsorted(edges, centroid_vox[:, axis], side="right") - 1, 0, int(b) - 1)
        idx = idx * int(b) + k
    return idx


@dataclass
class StateAnalysis:
    """Statistics of one state.

    ``stats``: whole-volume :func:`compute_statistics` result; ``row``: flat whole-volume values
    (plus derived columns); ``block_columns`` / ``block_values`` (n_blocks, n_columns): the
    per-block statistics; ``particles``: per-particle arrays of the particle phase (whole
    volume) with ``block`` (N,) = block of each particle's centroid; ``total_volume_um3``.
    """

    stats: dict[str, Any]
    row: dict[str, float]
    block_columns: list[str]
    block_values: np.ndarray
    particles: dict[str, np.ndarray] | None
    particle_phase: str | None
    n_blocks: int
    total_volume_um3: float


def particle_summary(
    particles: Mapping[str, np.ndarray], weights: np.ndarray | None, total_volume_um3: float
) -> dict[str, float]:
    """Particle statistics of :func:`compute_statistics` from per-particle arrays, weighted.

    ``weights`` (N,) are non-negative integer multiplicities (a bootstrap resample; None = 1
    each). With unit weights the values equal the whole-volume ones (``particle_count``,
    ``mean_diameter_um``, ``d10_um``…, ``d10_number_um``…, ``mean_sphericity``,
    ``crack_porosity``, counts) plus ``particle_volume_fraction``.
    """
    d = np.asarray(particles["diameter_um"], float)
    w = np.ones(d.size) if weights is None else np.asarray(weights, float)
    vol = np.asarray(particles["volume_um3"], float)
    used = np.asarray(particles["used_in_distribution"], bool)
    du, wu, vu = d[used], w[used], vol[used]
    out: dict[str, float] = {
        "particle_count": float(wu.sum()),
        "particle_count_all": float(w.sum()),
        "particle_count_border": float(w[np.asarray(particles["touches_border"], bool)].sum()),
        "mean_diameter_um": float(np.sum(wu * du) / wu.sum()) if wu.sum() else math.nan,
        "crack_porosity": (float(np.sum(w * vol * np.asarray(particles["crack_porosity"], float))
                                 / np.sum(w * vol)) if np.sum(w * vol) else math.nan),
        "particle_volume_fraction": float(np.sum(w * vol) / total_volume_um3),
    }
    sph = np.asarray(particles["sphericity"], float)[used]
    ok = np.isfinite(sph) & (wu > 0)
    out["mean_sphericity"] = float(np.sum(wu[ok] * sph[ok]) / wu[ok].sum()) if ok.any() else math.nan
    q = np.asarray(QUANTILES)
    vol_q = weighted_quantiles(du, wu * vu, q)
    rep = np.repeat(du, wu.astype(np.int64))
    num_q = np.quantile(rep, q) if rep.size else np.full(q.size, np.nan)
    for qi, vq, nq in zip(QUANTILES, vol_q, num_q, strict=True):
        out[f"d{round(qi * 100)}_um"] = float(vq)
        out[f"d{round(qi * 100)}_number_um"] = float(nq)
    return out


def analyse_state(
    labels: np.ndarray,
    class_names: Sequence[str],
    voxel_size_nm: float,
    stats_options: Mapping[str, Any],
    blocks: Sequence[int] = (3, 3, 3),
    progress: Callable[[str], None] | None = None,
) -> StateAnalysis:
    """Whole-volume and per-block statistics of one (z, y, x) label volume (see module doc)."""
    options = dict(stats_options)
    stats = compute_statistics(labels, class_names, voxel_size_nm, progress=progress, **options)
    row = flatten_statistics(stats)
    voxel_um = check_voxel_size(voxel_size_nm) * 1e-3
    total_um3 = float(labels.size * voxel_um**3)
    phase = options.get("particle_phase", "NMC")
    particles = None
    if phase is not None and "particles" in stats:
        per = stats["particles"][phase]["particles"]
        particles = {k: np.asarray(v) for k, v in per.items()}
        centroid = np.asarray(per["centroid_um"], float).reshape(-1, 3) / voxel_um
        particles["block"] = _block_index(centroid, labels.shape, blocks)
        row[f"particle_volume_fraction/{phase}"] = particle_summary(
            particles, None, total_um3)["particle_volume_fraction"]
    slices = block_slices(labels.shape, blocks)
    block_opts = {**options, "particle_phase": None, "tortuosity": False}
    block_rows = [flatten_statistics(compute_statistics(labels[s], class_names, voxel_size_nm,
                                                        **block_opts)) for s in slices]
    columns = [c for c in block_rows[0] if not c.startswith("time_s/")]
    values = np.array([[r.get(c, math.nan) for c in columns] for r in block_rows], float)
    return StateAnalysis(stats, row, columns, values, particles, phase, len(slices), total_um3)


# --------------------------------------------------------------------------- intervals, tests
def _resample_counts(n_blocks: int, n_resamples: int, rng: np.random.Generator) -> np.ndarray:
    idx = rng.integers(0, n_blocks, (n_resamples, n_blocks))
    offset = (np.arange(n_resamples)[:, None] * n_blocks + idx).ravel()
    return np.bincount(offset, minlength=n_resamples * n_blocks).reshape(n_resamples, n_blocks)


def bootstrap_intervals(
    state: StateAnalysis, n_resamples: int = 1000, confidence: float = 0.95, seed: int = 0
) -> dict[str, dict[str, float]]:
    """``{column: {"ci_low", "ci_high", "se"}}`` by block resampling (see the module doc).

    Columns without a per-block or per-particle estimate (tortuosity) are absent.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    rng = np.random.default_rng(seed)
    counts = _resample_counts(state.n_blocks, n_resamples, rng).astype(float)
    alpha = (1 - confidence) / 2
    out: dict[str, dict[str, float]] = {}

    def put(column: str, replicates: np.ndarray, centre: float) -> None:
        estimate = state.row.get(column, math.nan)
        finite = replicates[np.isfinite(replicates)]
        if not finite.size or not math.isfinite(estimate) or not math.isfinite(centre):
            out[column] = {"ci_low": math.nan, "ci_high": math.nan, "se": math.nan}
            return
        lo, hi = np.quantile(finite, [alpha, 1 - alpha])
        out[column] = {"ci_low": float(estimate + lo - centre), "ci_high": float(estimate + hi - centre),
                       "se": float(finite.std(ddof=1)) if finite.size > 1 else math.nan}

    values = state.block_values
    finite = np.isfinite(values)
    v0 = np.where(finite, values, 0.0)
    sums = counts @ v0
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / (counts @ finite)
    for j, column in enumerate(state.block_columns):
        extensive = column.split("/", 1)[0] in EXTENSIVE
        if extensive:
            put(column, sums[:, j], float(v0[:, j].sum()))
        else:
            col = values[:, j][finite[:, j]]
            put(column, means[:, j], float(col.mean()) if col.size else math.nan)
    if state.particles is not None and state.particle_phase is not None:
        block = state.particles["block"]
        centre = particle_summary(state.particles, None, state.total_volume_um3)
        reps = [particle_summary(state.particles, c[block], state.total_volume_um3) for c in counts]
        for key, value in centre.items():
            column = f"{key}/{state.particle_phase}"
            if column in state.row:
                put(column, np.array([r[key] for r in reps]), value)
    return out


def _holm(p: np.ndarray) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (NaN kept)."""
    p = np.asarray(p, float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok])]
    m = order.size
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def _permutation_p(x: np.ndarray, y: np.ndarray, paired: bool, n_resamples: int,
                   rng: np.random.Generator, median: bool = False) -> float:
    """Two-sided permutation p-value of mean(y) - mean(x) (paired: sign flips of y - x).

    ``median`` (paired only): the statistic is the median of y - x, robust to a few outliers.
    """
    from scipy.stats import permutation_test

    def diff(a: np.ndarray, b: np.ndarray, axis: int = -1) -> np.ndarray:
        if median:
            return np.median(b - a, axis=axis)
        return np.mean(b, axis=axis) - np.mean(a, axis=axis)

    if np.allclose(x, y) if paired else np.allclose(x.mean(), y.mean()):
        return 1.0
    res = permutation_test((x, y), diff, permutation_type="samples" if paired else "independent",
                           vectorized=True, n_resamples=n_resamples, rng=rng)
    return float(res.pvalue)


def compare_states(
    a: StateAnalysis,
    b: StateAnalysis,
    *,
    paired: bool,
    n_resamples: int = 9999,
    alpha: float = 0.05,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """Tests of change from state ``a`` to ``b`` (rows of ``tests.csv``, Holm-adjusted).

    KS on the particle diameters (distribution used for d10/d50/d90), permutation tests on the
    means of per-particle quantities (independent samples) and of each per-block statistic
    (paired sign flips when ``paired``: same block grid on aligned volumes).
    """
    from scipy.stats import ks_2samp

    rng = np.random.default_rng(seed)
    rows: list[dict[str, Any]] = []

    def add(statistic: str, test: str, x: np.ndarray, y: np.ndarray, effect: float, p: float) -> None:
        rows.append({"statistic": statistic, "test": test, "n_a": int(x.size), "n_b": int(y.size),
                     "mean_a": float(np.mean(x)) if x.size else math.nan,
                     "mean_b": float(np.mean(y)) if y.size else math.nan,
                     "difference": float(np.mean(y) - np.mean(x)) if x.size and y.size else math.nan,
                     "effect": effect, "p_value": p})

    if a.particles is not None and b.particles is not None and a.particle_phase == b.particle_phase:
        ua = np.asarray(a.particles["used_in_distribution"], bool)
        ub = np.asarray(b.particles["used_in_distribution"], bool)
        for key in PARTICLE_QUANTITIES:
            x = np.asarray(a.particles[key], float)[ua]
            y = np.asarray(b.particles[key], float)[ub]
            x, y = x[np.isfinite(x)], y[np.isfinite(y)]
            if x.size < 2 or y.size < 2:
                continue
            column = f"{key}/{a.particle_phase}"
            if key == "diameter_um":
                ks = ks_2samp(x, y)
                add(column, "ks_2samp", x, y, float(ks.statistic), float(ks.pvalue))
            add(column, "permutation_mean", x, y, float(y.mean() - x.mean()),
                _permutation_p(x, y, False, n_resamples, rng))
    paired = paired and a.n_blocks == b.n_blocks
    for j, column in enumerate(a.block_columns):
        if column not in b.block_columns:
            continue
        x = a.block_values[:, j]
        y = b.block_values[:, b.block_columns.index(column)]
        if paired:
            ok = np.isfinite(x) & np.isfinite(y)
            x, y = x[ok], y[ok]
        else:
            x, y = x[np.isfinite(x)], y[np.isfinite(y)]
        if x.size < 2 or y.size < 2:
            continue
        test = "paired_permutation_mean" if paired else "permutation_mean"
        add(column, f"{test} (blocks)", x, y, float(y.mean() - x.mean()),
            _permutation_p(x, y, paired, n_resamples, rng))
    p_holm = _holm(np.array([r["p_value"] for r in rows]))
    for r, ph in zip(rows, p_holm, strict=True):
        r["p_holm"] = float(ph)
        r["significant"] = bool(ph < alpha)
    return rows


# --------------------------------------------------------------------------- the series
def _particle_regions(labels: np.ndarray, class_names: Sequence[str],
                      stats_options: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    """Particle ids and phase mask with the same separation settings as the statistics."""
    phase = stats_options.get("particle_phase", "NMC")
    mask = labels == list(class_names).index(phase)
    sep = {k: v for k, v in dict(stats_options.get("particles") or {}).items()
           if k in ("closing_radius", "sigma", "min_distance", "h")}
    regions, _ = separate_particles(mask, **sep)
    return regions, mask


def run_evolution(
    entries: Sequence[ManifestEntry],
    *,
    class_names: Sequence[str],
    voxel_size_nm: float | None = None,
    label_values: Sequence[int] | None = None,
    stats_options: Mapping[str, Any] | None = None,
    blocks: Sequence[int] = (3, 3, 3),
    n_bootstrap: int = 1000,
    confidence: float = 0.95,
    register: bool = False,
    registration: Mapping[str, Any] | None = None,
    track: bool = False,
    min_overlap: float = 0.5,
    paired: bool | str = "auto",
    n_permutations: int = 9999,
    alpha: float = 0.05,
    seed: int = 0,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Statistics of every state, their intervals, the tests and optional registration/tracking.

    ``voxel_size_nm`` (nm) overrides the manifest's ``voxel_size_nm`` column; one of them must
    give each state's voxel size. ``registration``: keyword arguments of
    :func:`~src.analysis.registration.register_series` plus ``phase`` (the indicator used,
    default the particle phase). ``paired="auto"``: paired block tests when all states have
    the same shape (same field of view; always after registration). Everything is read and
    checked before anything is computed. Returns a dict: ``states``, ``rows``, ``columns``,
    ``tests``, ``tracking``, ``registration``, ``analyses`` (:class:`StateAnalysis` per state).
    """
    say = progress or (lambda _msg: None)
    class_names = list(class_names)
    options = dict(stats_options or {})
    phase = options.get("particle_phase", "NMC")
    if len(entries) < 2:
        raise ValueError(f"an evolution series needs at least 2 states, got {len(entries)}")
    voxels = []
    for e in entries:
        value = voxel_size_nm if voxel_size_nm is not None else e.voxel_size_nm
        if value is None or (isinstance(value, float) and math.isnan(value)):
            raise ValueError(f"state {e.name} (manifest row {e.row}): no voxel size; give "
                             "voxel_size_nm=... or a 'voxel_size_nm' column in the manifest")
        voxels.append(check_voxel_size(value))
    volumes = [load_label_volume(e.path, class_names, label_values,
                           source=f"{e.path} (manifest row {e.row})") for e in entries]
    shapes = [v.shape for v in volumes]
    same_grid = len(set(shapes)) == 1 and len(set(voxels)) == 1
    if (register or track) and not same_grid:
        raise ValueError(f"register/track need all states on one grid (same shape and voxel "
                         f"size), got shapes {shapes} and voxel sizes {voxels} nm")
    if track and phase is None:
        raise ValueError("track=true needs stats.particle_phase")
    reg_info: dict[str, Any] | None = None
    if register:
        reg = dict(registration or {})
        reg_phase = reg.pop("phase", None) or phase or class_names[0]
        if reg_phase not in class_names:
            raise ValueError(f"registration.phase={reg_phase!r} is not one of {class_names}")
        index = class_names.index(reg_phase)
        say(f"registering {len(volumes)} states on {reg_phase}")
        shifts = register_series([v == index for v in volumes], **reg)
        crops = common_crop(shapes, shifts)
        volumes = [np.ascontiguousarray(v[c]) for v, c in zip(volumes, crops, strict=True)]
        reg_info = {"phase": reg_phase, "settings": reg,
                    "shift_vox": [np.asarray(s).tolist() for s in shifts],
                    "crop": [[[s.start, s.stop] for s in c] for c in crops],
                    "shape": list(volumes[0].shape)}
    analyses = []
    for e, v, vox in zip(entries, volumes, voxels, strict=True):
        say(f"state {e.name}: statistics of {v.shape}")
        analyses.append(analyse_state(v, class_names, vox, options, blocks))
    use_pairs = same_grid if paired == "auto" else bool(paired)
    if use_pairs and not same_grid:
        raise ValueError("paired tests need all states on one grid (same shape and voxel size)")
    rows, columns = [], []
    for e, st, k in zip(entries, analyses, range(len(entries)), strict=True):
        cis = bootstrap_intervals(st, n_bootstrap, confidence, seed + k)
        row: dict[str, Any] = {"name": e.name, "soc": e.soc, "voltage": e.voltage,
                               "time_h": e.time_h, "path": str(e.path)}
        for column, value in st.row.items():
            if column.startswith("time_s/"):
                continue
            row[column] = value
            ci = cis.get(column, {"ci_low": math.nan, "ci_high": math.nan})
            row[f"{column}/ci_low"] = ci["ci_low"]
            row[f"{column}/ci_high"] = ci["ci_high"]
            if column not in columns:
                columns.append(column)
        rows.append(row)
    tests = []
    for k in range(len(analyses) - 1):
        say(f"tests {entries[k].name} -> {entries[k + 1].name}")
        for r in compare_states(analyses[k], analyses[k + 1], paired=use_pairs,
                                n_resamples=n_permutations, alpha=alpha, seed=seed + k):
            tests.append({"state_a": entries[k].name, "state_b": entries[k + 1].name, **r})
    tracking = []
    if track:
        rng = np.random.default_rng(seed)
        rb, mb = _particle_regions(volumes[0], class_names, options)
        for k in range(len(volumes) - 1):  # two states' particle ids in memory at a time
            say(f"tracking {entries[k].name} -> {entries[k + 1].name}")
            (ra, ma), (rb, mb) = (rb, mb), _particle_regions(volumes[k + 1], class_names, options)
            res = track_particles(ra, rb, ma, mb, voxels[k] * 1e-3, min_overlap=min_overlap)
            res["state_a"], res["state_b"] = entries[k].name, entries[k + 1].name
            tracking.append(res)
            s, parts = res["summary"], res["particles"]
            rows[k + 1][f"tracked_volume_change_percent/{phase}"] = s["median_volume_change_percent"]
            rows[k + 1][f"tracked_crack_porosity_change/{phase}"] = s["median_crack_porosity_change"]
            interior = ~np.asarray(parts["touches_border"], bool)
            pair_rows = []
            # volume: median log ratio (robust to the few split/merged particles), effect = its
            # median change in %; crack porosity: mean change (most particles stay uncracked)
            for key, name in (("volume", "particle_volume_um3"), ("crack_porosity", "crack_porosity")):
                suffix = ("_a_um3", "_b_um3") if key == "volume" else ("_a", "_b")
                x = np.asarray(parts[f"{key}{suffix[0]}"], float)[interior]
                y = np.asarray(parts[f"{key}{suffix[1]}"], float)[interior]
                if x.size < 2:
                    continue
                volume = key == "volume"
                xt, yt = (np.log(x), np.log(y)) if volume else (x, y)
                pair_rows.append({
                    "state_a": entries[k].name, "state_b": entries[k + 1].name,
                    "statistic": f"tracked_{name}/{phase}",
                    "test": ("paired_permutation_median_log_ratio" if volume else
                             "paired_permutation_mean") + " (tracked particles)",
                    "n_a": int(x.size), "n_b": int(y.size), "mean_a": float(x.mean()),
                    "mean_b": float(y.mean()), "difference": float(y.mean() - x.mean()),
                    "effect": (100.0 * float(np.expm1(np.median(yt - xt))) if volume
                               else float(np.mean(y - x))),
                    "p_value": _permutation_p(xt, yt, True, n_permutations, rng, median=volume)})
            p_holm = _holm(np.array([r["p_value"] for r in pair_rows]))
            for r, ph in zip(pair_rows, p_holm, strict=True):  # own family: the tracked tests
                r["p_holm"] = float(ph)
                r["significant"] = bool(ph < alpha)
            tests.extend(pair_rows)
        for column in (f"tracked_volume_change_percent/{phase}", f"tracked_crack_porosity_change/{phase}"):
            rows[0].setdefault(column, math.nan)
            columns.append(column)
    states = [{"name": e.name, "path": str(e.path), "soc": e.soc, "voltage": e.voltage,
               "time_h": e.time_h, "voxel_size_nm": vox, "shape": list(v.shape), "row": e.row}
              for e, v, vox in zip(entries, volumes, voxels, strict=True)]
    return {"states": states, "rows": rows, "columns": columns, "tests": tests,
            "tracking": tracking, "registration": reg_info, "analyses": analyses,
            "settings": {"class_names": class_names, "label_values": label_values,
                         "stats": options, "blocks": list(blocks), "n_bootstrap": n_bootstrap,
                         "confidence": confidence, "paired_tests": use_pairs,
                         "n_permutations": n_permutations, "alpha": alpha, "seed": seed,
                         "register": register, "track": track, "min_overlap": min_overlap}}


# --------------------------------------------------------------------------- outputs
def _units(columns: Sequence[str]) -> dict[str, dict[str, str]]:
    out = {}
    for column in columns:
        key = column.split("/", 1)[0]
        if key in DERIVED_UNITS:
            unit, description = DERIVED_UNITS[key]
            out[column] = {"unit": unit, "description": description}
        else:
            try:
                out.update(units([column]))
            except KeyError:
                out[column] = {"unit": "", "description": ""}
    return out


def _select(columns: Sequence[str], patterns: Sequence[str]) -> list[str]:
    chosen: list[str] = []
    for pattern in patterns:
        chosen += [c for c in columns if fnmatch.fnmatchcase(c, pattern) and c not in chosen]
    return chosen


def plot_evolution(path: Path, result: Mapping[str, Any], columns: Sequence[str], x_axis: str) -> None:
    """PNG grid: each statistic (column) vs ``x_axis`` with its confidence interval as error bars.

    A ``*`` between two states marks a change whose Holm-adjusted test is significant.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    x = np.array([r[x_axis] for r in rows], float)
    significant = {(t["state_a"], t["statistic"]) for t in result["tests"] if t["significant"]}
    n = max(len(columns), 1)
    ncol = min(4, n)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.6 * ncol, 2.8 * nrow), squeeze=False)
    for ax, column in zip(axes.ravel(), columns, strict=False):
        y = np.array([r.get(column, math.nan) for r in rows], float)
        lo = np.array([r.get(f"{column}/ci_low", math.nan) for r in rows], float)
        hi = np.array([r.get(f"{column}/ci_high", math.nan) for r in rows], float)
        err = np.vstack([np.nan_to_num(y - lo), np.nan_to_num(hi - y)]).clip(min=0)
        ax.errorbar(x, y, yerr=err, fmt="o-", capsize=3, ms=4)
        stat, _, phase = column.partition("/")
        quantile = stat[:1] == "d" and stat[1:3].isdigit()  # d50_um etc.: the size KS test
        for k in range(len(rows) - 1):
            key = f"diameter_um/{phase}" if quantile else column
            if (rows[k]["name"], key) in significant and np.isfinite(y[k:k + 2]).all():
                ax.annotate("*", ((x[k] + x[k + 1]) / 2, (y[k] + y[k + 1]) / 2), color="C3",
                            ha="center", fontsize=12)
        unit = _units([column])[column]["unit"]
        ax.set_title(column + (f" [{unit}]" if unit not in ("", "1") else ""), fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel({"soc": "state of charge", "time_h": "time (h)", "voltage": "voltage (V)"}
                      .get(x_axis, x_axis), fontsize=7)
    for ax in axes.ravel()[n:]:
        ax.axis("off")
    fig.suptitle("statistics vs " + x_axis + " (error bars: bootstrap CI over sub-volumes; "
                 "* significant change)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def plot_distributions(path: Path, result: Mapping[str, Any], x_axis: str) -> None:
    """PNG: particle size distributions, pore local thickness and tracked volume changes.

    Particle sizes volume-weighted and cumulative by number; one curve per state coloured by
    ``x_axis``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, analyses = result["rows"], result["analyses"]
    values = np.array([r[x_axis] for r in rows], float)
    span = np.nanmax(values) - np.nanmin(values) if np.isfinite(values).any() else 0.0
    colours = plt.cm.viridis((values - np.nanmin(values)) / span if span > 0 else
                             np.linspace(0, 1, len(rows)))
    panels = 3 + bool(result["tracking"])
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.4))
    diam = [a.particles["diameter_um"][a.particles["used_in_distribution"].astype(bool)]
            if a.particles is not None else np.zeros(0) for a in analyses]
    alld = np.concatenate(diam) if diam else np.zeros(0)
    bins = np.linspace(alld.min(), alld.max(), 16) if alld.size and np.ptp(alld) > 0 else 10
    for r, d, c in zip(rows, diam, colours, strict=True):
        label = f"{r['name']} ({x_axis}={r[x_axis]:.3g})"
        if d.size:
            axes[0].hist(d, bins=bins, weights=d**3 / np.sum(d**3), histtype="step", color=c,
                         label=label)
            s = np.sort(d)
            axes[1].step(s, np.arange(1, s.size + 1) / s.size, where="post", color=c, label=label)
    axes[0].set(xlabel="equivalent diameter (µm)", ylabel="volume fraction of particles",
                title="particle size (volume-weighted)")
    axes[1].set(xlabel="equivalent diameter (µm)", ylabel="cumulative number fraction",
                title="particle size (number CDF)")
    for r, a, c in zip(rows, analyses, colours, strict=True):
        for name, lt in a.stats.get("local_thickness", {}).items():
            edges, frac = np.asarray(lt["hist_edges_um"]), np.asarray(lt["hist_fraction"])
            if edges.size:  # cumulative: the thickness values sit on a few discrete radii
                axes[2].plot(edges[1:], np.cumsum(frac), "-", color=c, label=f"{r['name']} {name}")
    axes[2].set(xlabel="local thickness (µm)", ylabel="cumulative volume fraction",
                title="local thickness")
    if result["tracking"]:
        for t, c in zip(result["tracking"], colours[1:], strict=False):
            ch = np.asarray(t["particles"]["volume_change_percent"], float)
            ch = ch[~np.asarray(t["particles"]["touches_border"], bool)]
            if ch.size:  # outliers (split/merged particles) gathered in the end bins
                lo, hi = np.percentile(ch, [2, 98])
                span = max(hi - lo, 1.0)
                axes[3].hist(np.clip(ch, lo - 0.5 * span, hi + 0.5 * span), bins=40,
                             histtype="step", color=c, label=f"{t['state_a']}→{t['state_b']}")
        axes[3].set(xlabel="particle volume change (%)", ylabel="tracked particles",
                    title="tracked particles (interior)")
    for ax in axes:
        ax.tick_params(labelsize=7)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)


def check_x_axis(x_axis: str, values: Mapping[str, float], source: str = "the manifest") -> None:
    """Refuse an ``x_axis`` other than soc/time_h/voltage, or one that a state lacks.

    Args:
        x_axis: ``soc``, ``time_h`` or ``voltage``.
        values: that column's value per state name (NaN where the manifest gives none).
        source: named in the message (e.g. the manifest's path).
    """
    if x_axis not in ("soc", "time_h", "voltage"):
        raise ValueError(f"x_axis must be soc, time_h or voltage, got {x_axis!r}")
    missing = [name for name, v in values.items() if not math.isfinite(v)]
    if missing:
        raise ValueError(f"x_axis={x_axis}: {source} gives no {x_axis} for states {missing}")


def write_outputs(
    out_dir: str | os.PathLike[str],
    result: Mapping[str, Any],
    *,
    x_axis: str = "soc",
    figure: bool = True,
    figure_statistics: Sequence[str] | None = None,
) -> dict[str, Path]:
    """Write the tables, JSON and figures of :func:`run_evolution` (each file atomically)."""
    check_x_axis(x_axis, {r["name"]: r[x_axis] for r in result["rows"]})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"evolution_csv": out / "evolution.csv", "evolution_json": out / "evolution.json",
             "tests_csv": out / "tests.csv", "units_json": out / "units.json"}
    columns = result["columns"]
    write_csv_atomic(paths["evolution_csv"], result["rows"],
                     first=("name", "soc", "voltage", "time_h", "path"))
    write_csv_atomic(paths["tests_csv"], result["tests"], first=("state_a", "state_b", "statistic", "test"))
    unit_table = _units(columns)
    write_json(paths["units_json"], {"columns": unit_table, "ci_suffixes": {
        "/ci_low": "lower bound of the bootstrap confidence interval (same unit)",
        "/ci_high": "upper bound (same unit)"}})
    statistics = {c: {"unit": unit_table[c]["unit"],
                      "value": [r.get(c, math.nan) for r in result["rows"]],
                      "ci_low": [r.get(f"{c}/ci_low", math.nan) for r in result["rows"]],
                      "ci_high": [r.get(f"{c}/ci_high", math.nan) for r in result["rows"]]}
                  for c in columns}
    distributions = {}
    for s, a in zip(result["states"], result["analyses"], strict=True):
        if a.particles is not None:
            used = a.particles["used_in_distribution"].astype(bool)
            distributions[s["name"]] = {k: np.asarray(a.particles[k])[used].tolist()
                                        for k in PARTICLE_QUANTITIES}
    write_json(paths["evolution_json"], {
        "x_axis": x_axis, "states": result["states"], "statistics": statistics,
        "tests": result["tests"], "registration": result["registration"],
        "tracking": [{"state_a": t["state_a"], "state_b": t["state_b"], "summary": t["summary"]}
                     for t in result["tracking"]],
        "particle_distributions": distributions, "settings": result["settings"]})
    if result["tracking"]:
        paths["tracking_csv"] = out / "tracking.csv"
        track_rows = []
        for t in result["tracking"]:
            parts = t["particles"]
            for i in range(len(parts["id_a"])):
                track_rows.append({"state_a": t["state_a"], "state_b": t["state_b"],
                                   **{k: v[i] for k, v in parts.items()}})
        write_csv_atomic(paths["tracking_csv"], track_rows, first=("state_a", "state_b"))
    if figure:
        chosen = _select(columns, figure_statistics or DEFAULT_FIGURE_STATISTICS)
        paths["evolution_png"] = out / "evolution.png"
        plot_evolution(paths["evolution_png"], result, chosen, x_axis)
        paths["distributions_png"] = out / "distributions.png"
        plot_distributions(paths["distributions_png"], result, x_axis)
    return paths


def evolve_series(
    manifest: str | os.PathLike[str],
    output_dir: str | os.PathLike[str],
    *,
    x_axis: str = "soc",
    figure: bool = True,
    figure_statistics: Sequence[str] | None = None,
    electrode: ElectrodeSettings | None = None,
    **options: Any,
) -> dict[str, Any]:
    """Read ``manifest``, run :func:`run_evolution`, write its outputs (``evolve.py``'s work).

    Args:
        manifest: CSV/YAML of the states (see :func:`read_manifest`).
        output_dir: the output folder (see :func:`write_outputs`).
        x_axis: ``soc``, ``time_h`` or ``voltage``: the figures' x (checked before any work).
        figure: also write the PNGs.
        figure_statistics: column patterns plotted (fnmatch); None = a default selection.
        electrode: also write each state's PyBaMM parameter set (``pybamm/``) and their series
            against ``x_axis``; None = no.
        **options: keyword arguments of :func:`run_evolution` (``class_names`` at least).

    Returns:
        :func:`run_evolution`'s result with ``paths`` (the files written).
    """
    entries = read_manifest(manifest)
    check_x_axis(x_axis, {e.name: getattr(e, x_axis, math.nan) for e in entries}, f"manifest {manifest}")
    result = run_evolution(entries, **options)
    paths: dict[str, Any] = dict(write_outputs(Path(output_dir), result, x_axis=x_axis, figure=figure,
                                               figure_statistics=figure_statistics))
    if electrode is not None:
        states = [(s["name"], float(s[x_axis]), a.stats) for s, a in zip(result["states"], result["analyses"], strict=True)]
        paths["pybamm_parameters"] = [str(p) for p in parameters_per_state(states, electrode, output_dir, x_axis, figure)]
    log.info("evolution of %d states written to %s", len(entries), output_dir)
    result["paths"] = paths
    return result
