"""Compare training runs from their local folders (no dashboard, no account).

A run folder is what ``train.py`` writes: ``.hydra/config.yaml`` and ``.hydra/overrides.yaml``
(the settings), ``csv/metrics.csv`` (CSV logger) and/or ``tensorboard/`` event files (the
metrics over steps and epochs), ``error.txt`` when a sweep job failed. A sweep folder holds one
run folder per job.
"""

from __future__ import annotations

import csv
import glob
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from src.data.io import write_text

log = logging.getLogger(__name__)

HYDRA_CONFIG = Path(".hydra") / "config.yaml"
HYDRA_OVERRIDES = Path(".hydra") / "overrides.yaml"
ERROR_FILE = "error.txt"


@dataclass
class Curve:
    """One metric over training: ``steps`` (global step), ``epochs`` and ``values``, same length."""

    steps: np.ndarray
    epochs: np.ndarray
    values: np.ndarray


@dataclass
class Run:
    """A run folder with its settings and metric curves (name → :class:`Curve`)."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    curves: dict[str, Curve] = field(default_factory=dict)
    error: str | None = None
    name: str = ""


def _read_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ValueError(f"{path}: not valid YAML ({err})") from err


def flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mapping → ``{"a.b.c": value}``; lists stay values."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def parse_overrides(overrides: Iterable[str]) -> dict[str, str]:
    """Hydra command-line overrides (``model=unet``, ``+x=1``, ``~y``) → ``{key: value}``."""
    parsed = {}
    for item in overrides:
        key, _, value = str(item).partition("=")
        parsed[key.lstrip("+~")] = value
    return parsed


def _metrics_csv_curves(path: Path) -> dict[str, Curve]:
    """Every numeric column of a Lightning ``metrics.csv`` (rows are sparse: one logging call each)."""
    with open(path, newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return {}
    curves = {}
    for key in rows[0]:
        if key in ("step", "epoch"):
            continue
        points = [(r.get("step"), r.get("epoch"), r[key]) for r in rows if r.get(key) not in (None, "")]
        if not points:
            continue
        try:
            arr = np.array([[float(s or "nan"), float(e or "nan"), float(v)] for s, e, v in points])
        except ValueError:
            continue  # not a numeric column
        curves[key] = Curve(arr[:, 0], arr[:, 1], arr[:, 2])
    return curves


def _tensorboard_curves(folder: Path) -> dict[str, Curve]:
    """Scalar tags of TensorBoard event files under ``folder`` (epoch from the ``epoch`` tag)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves: dict[str, Curve] = {}
    for events_dir in sorted({p.parent for p in folder.rglob("events.out.tfevents.*")}):
        acc = EventAccumulator(str(events_dir), size_guidance={"scalars": 0})
        acc.Reload()
        tags = acc.Tags().get("scalars", [])
        epoch_of_step = {e.step: e.value for e in acc.Scalars("epoch")} if "epoch" in tags else {}
        for tag in tags:
            if tag == "epoch":
                continue
            events = acc.Scalars(tag)
            steps = np.array([e.step for e in events], float)
            epochs = np.array([epoch_of_step.get(e.step, math.nan) for e in events], float)
            curves[tag] = Curve(steps, epochs, np.array([e.value for e in events], float))
    return curves


def read_run(path: str | Path) -> Run:
    """Settings, curves and failure of one run folder (CSV metrics first, else TensorBoard)."""
    path = Path(path)
    run = Run(path=path)
    if (path / HYDRA_CONFIG).is_file():
        run.config = _read_yaml(path / HYDRA_CONFIG) or {}
    if (path / HYDRA_OVERRIDES).is_file():
        run.overrides = [str(o) for o in (_read_yaml(path / HYDRA_OVERRIDES) or [])]
    for csv_path in sorted(path.glob("**/metrics.csv")):
        run.curves.update(_metrics_csv_curves(csv_path))
    if not run.curves:
        run.curves = _tensorboard_curves(path)
    if (path / ERROR_FILE).is_file():
        lines = [ln for ln in (path / ERROR_FILE).read_text(encoding="utf-8").splitlines() if ln.strip()]
        run.error = lines[-1].strip() if lines else "failed"
    return run


def _has_metrics(folder: Path) -> bool:
    return any(folder.glob("csv/metrics.csv")) or any(folder.glob("metrics.csv")) or any(
        folder.glob("tensorboard/**/events.out.tfevents.*"))


def find_run_dirs(spec: str | Path | Sequence[str | Path]) -> list[Path]:
    """Run folders matched by a glob, a folder (a run or a sweep of runs) or a list of them.

    A run folder has ``.hydra/config.yaml`` or logged metrics; folders below a matched folder
    are searched, so a sweep folder gives all its jobs. Raises ``FileNotFoundError`` naming the
    pattern when nothing matches.
    """
    specs = [spec] if isinstance(spec, str | Path) else list(spec)
    found: list[Path] = []
    for item in specs:
        matches = sorted(Path(p) for p in glob.glob(str(item), recursive=True))
        for match in matches:
            if not match.is_dir():
                continue
            if (match / HYDRA_CONFIG).is_file() or _has_metrics(match):
                found.append(match)
                continue
            nested = sorted({p.parent.parent for p in match.rglob(str(HYDRA_CONFIG))})
            found.extend(nested)
    runs = list(dict.fromkeys(p.resolve() for p in found))
    if not runs:
        raise FileNotFoundError(
            f"runs={spec!r}: no run folder found (expected folders with .hydra/config.yaml, "
            "csv/metrics.csv or tensorboard/ event files, or a sweep folder holding them)"
        )
    return runs


def _short_names(paths: Sequence[Path]) -> list[str]:
    """Paths relative to their common parent (the folder name alone for a single run)."""
    import os

    common = Path(os.path.commonpath([str(p) for p in paths]))
    names = [str(p.relative_to(common)) for p in paths]
    return [p.name if n == "." else n for p, n in zip(paths, names, strict=True)]


def _ignored(key: str, ignore: Sequence[str]) -> bool:
    return any(key == p or key.startswith(f"{p}.") or key.startswith(f"{p}/") for p in ignore)


def varying_settings(runs: Sequence[Run], ignore: Sequence[str] = ("paths", "hydra")) -> list[dict[str, str]]:
    """Per run, the settings that are not the same in every run.

    The runs' command-line overrides are compared first (``model=unet``, ``seed=2``: what the
    user changed); when those do not tell the runs apart, the full configs are compared.
    Keys under ``ignore`` (prefixes) are left out.
    """
    def differing(per_run: list[dict[str, Any]]) -> list[str]:
        keys = list(dict.fromkeys(k for d in per_run for k in d if not _ignored(k, ignore)))
        return [k for k in keys if len({repr(d.get(k)) for d in per_run}) > 1]

    overrides = [parse_overrides(r.overrides) for r in runs]
    keys = differing(overrides)
    source = overrides
    if not keys:
        source = [flatten(r.config) for r in runs]
        keys = differing(source)
    return [{k: format_setting(d.get(k)) for k in keys} for d in source]


def format_setting(value: Any) -> str:
    """Format a setting for a table: floats to 4 significant digits, None as ``-``.

    Floats also when given as override strings such as ``0.000430201820``.
    """
    if value is None:
        return "-"
    if isinstance(value, str) and len(value) > 8 and any(c in value for c in ".e"):
        try:
            value = float(value)
        except ValueError:
            return value
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def summarize(run: Run, metric: str, mode: str = "max") -> dict[str, float]:
    """Final and best value of ``metric`` with the epoch/step of the best (NaN when absent)."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be max or min, got {mode!r}")
    curve = run.curves.get(metric)
    if curve is None or not np.isfinite(curve.values).any():
        return {"final": math.nan, "best": math.nan, "best_epoch": math.nan, "best_step": math.nan}
    values = np.where(np.isfinite(curve.values), curve.values, -np.inf if mode == "max" else np.inf)
    i = int(np.argmax(values) if mode == "max" else np.argmin(values))
    return {"final": float(curve.values[-1]), "best": float(curve.values[i]),
            "best_epoch": float(curve.epochs[i]), "best_step": float(curve.steps[i])}


def sort_key(value: float, mode: str) -> tuple[int, float]:
    """Sort NaN last, the best first."""
    if value is None or math.isnan(value):
        return (1, 0.0)
    return (0, -value if mode == "max" else value)


def comparison_rows(runs: Sequence[Run], metric: str, mode: str = "max",
                    ignore: Sequence[str] = ("paths", "hydra")) -> list[dict[str, Any]]:
    """One row per run, best first: the varying settings and the best/final ``metric``.

    Columns: ``run``, the varying settings, ``best``/``final`` of ``metric``, ``best_epoch``,
    ``status`` (``ok``, ``failed: <error>``, ``no <metric>``).
    """
    settings = varying_settings(runs, ignore)
    rows = []
    for run, varying in zip(runs, settings, strict=True):
        stats = summarize(run, metric, mode)
        status = f"failed: {run.error}" if run.error else ("ok" if math.isfinite(stats["best"]) else f"no {metric}")
        rows.append({"run": run.name or run.path.name, **varying, f"best {metric}": stats["best"],
                     f"final {metric}": stats["final"],
                     "best epoch": int(stats["best_epoch"]) if math.isfinite(stats["best_epoch"]) else math.nan,
                     "status": status})
    return sorted(rows, key=lambda r: sort_key(r[f"best {metric}"], mode))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.0f}" if value.is_integer() and abs(value) > 1 else f"{value:.4f}"
    return str(value).replace("|", "\\|")


def markdown_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """Rows (same keys) → a Markdown table, floats with 4 decimals, NaN as ``-``."""
    if not rows:
        return "(no rows)"
    keys = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(keys) + " |", "|" + "|".join("---" for _ in keys) + "|"]
    lines += ["| " + " | ".join(_cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def write_rows_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Rows → CSV, written atomically."""
    from src.data.io import atomic_output

    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def plot_curves(runs: Sequence[Run], metrics: Sequence[str], path: str | Path, x_axis: str = "epoch",
                labels: Sequence[str] | None = None) -> Path:
    """One panel per metric, one line per run (x: ``epoch`` or ``step``), saved as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from src.data.io.figures import save_figure

    if x_axis not in ("epoch", "step"):
        raise ValueError(f"x_axis must be epoch or step, got {x_axis!r}")
    from matplotlib.ticker import MaxNLocator

    labels = list(labels) if labels is not None else [r.name for r in runs]
    legend_h = 0.22 * len(runs) + 0.3  # one legend line per run, under the panels
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4 + legend_h), squeeze=False)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, metric in zip(axes[0], metrics, strict=True):
        for i, run in enumerate(runs):
            curve = run.curves.get(metric)
            if curve is None:
                continue
            x = curve.epochs if x_axis == "epoch" and np.isfinite(curve.epochs).all() else curve.steps
            ax.plot(x, curve.values, marker="o", markersize=3, color=colors[i % len(colors)])
        ax.set_xlabel(x_axis)
        ax.set_ylabel(metric)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], color=colors[i % len(colors)], marker="o", markersize=3) for i in range(len(runs))]
    fig.legend(handles, labels, loc="lower left", fontsize=7, frameon=False, ncol=1)
    fig.tight_layout(rect=(0, legend_h / (4 + legend_h), 1, 1))
    return save_figure(fig, path, dpi=110)


def load_runs(spec: str | Path | Sequence[str | Path]) -> list[Run]:
    """Every run folder matched by ``spec`` (see :func:`find_run_dirs`), read and named."""
    paths = find_run_dirs(spec)
    runs = [read_run(p) for p in paths]
    for run, name in zip(runs, _short_names(paths), strict=True):
        run.name = name
    return runs


def compare_runs(runs: str | Path | Sequence[str | Path], output_dir: str | Path, metric: str = "val/miou",
                 mode: str = "max", plot_metrics: Sequence[str] | None = None, x_axis: str = "epoch",
                 ignore: Sequence[str] = ("paths", "hydra")) -> list[dict[str, Any]]:
    """Rank the runs of ``runs`` by ``metric``; write the table and the learning curves.

    Args:
        runs: glob, run folder or sweep folder, or a list of them (see :func:`find_run_dirs`).
        output_dir: folder of ``compare.csv``, ``compare.md`` and ``learning_curves.png``.
        metric: the logged metric ranked (and plotted unless ``plot_metrics`` is given).
        mode: ``max`` or ``min``: which end of ``metric`` is best.
        plot_metrics: metrics drawn side by side; None = ``[metric]``.
        x_axis: ``epoch`` or ``step``.
        ignore: setting prefixes left out of the table's columns.

    Returns:
        One row per run, best first: ``run``, ``status``, best/final metric and the settings
        that differ between the runs.
    """
    loaded = load_runs(runs)
    if not any(metric in r.curves for r in loaded):
        known = sorted({k for r in loaded for k in r.curves})
        raise KeyError(f"metric {metric!r} is in none of the {len(loaded)} runs of {runs!r}; logged metrics: {known}")
    rows = comparison_rows(loaded, metric, mode, list(ignore))
    out = Path(output_dir)
    write_rows_csv(rows, out / "compare.csv")
    table = markdown_table(rows)
    write_text(out / "compare.md", table + "\n")
    order = {r["run"]: i for i, r in enumerate(rows)}
    ranked = sorted(loaded, key=lambda r: order[r.name])
    labels = [" ".join([r["run"], *(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in r.items() if k not in
                                     ("run", "status") and not k.startswith(("best", "final")))])
              for r in rows]
    plot_curves(ranked, list(plot_metrics or [metric]), out / "learning_curves.png", x_axis, labels)
    log.info("%d runs ranked by %s (%s):\n%s", len(rows), metric, mode, table)
    log.info("written: %s, %s, %s", out / "compare.csv", out / "compare.md", out / "learning_curves.png")
    return rows
