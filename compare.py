"""Compare training runs offline: ``python compare.py runs=GLOB_OR_SWEEP_DIR metric=val/miou``.

Reads every run folder (``.hydra`` settings, CSV or TensorBoard metrics), prints a table of the
best and final metric per run with the settings that differ between runs, best first, and
writes ``compare.csv``, ``compare.md`` and ``learning_curves.png`` (curves overlaid) into
``output_dir``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.cli import run_command
from src.data.io import write_text
from src.training.run_comparison import (
    comparison_rows,
    load_runs,
    markdown_table,
    plot_curves,
    write_rows_csv,
)

log = logging.getLogger("compare")


def compare(cfg: DictConfig) -> list[dict[str, Any]]:
    """Rank the runs of ``cfg.runs`` by ``cfg.metric``; write the table and the curves; return the rows."""
    spec = OmegaConf.to_container(cfg.runs) if OmegaConf.is_list(cfg.runs) else str(cfg.runs)
    runs = load_runs(spec)
    metric = str(cfg.metric)
    plot_metrics = [str(m) for m in (cfg.plot_metrics or [metric])]
    if not any(metric in r.curves for r in runs):
        known = sorted({k for r in runs for k in r.curves})
        raise KeyError(f"metric {metric!r} is in none of the {len(runs)} runs of {cfg.runs!r}; logged metrics: {known}")
    ignore = [str(i) for i in cfg.ignore]
    rows = comparison_rows(runs, metric, str(cfg.mode), ignore)
    out = Path(cfg.output_dir)
    write_rows_csv(rows, out / "compare.csv")
    table = markdown_table(rows)
    write_text(out / "compare.md", table + "\n")
    order = {r["run"]: i for i, r in enumerate(rows)}
    ranked = sorted(runs, key=lambda r: order[r.name])
    labels = [" ".join([r["run"], *(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in r.items() if k not in
                                     ("run", "status") and not k.startswith(("best", "final")))])
              for r in rows]
    plot_curves(ranked, plot_metrics, out / "learning_curves.png", str(cfg.x_axis), labels)
    log.info("%d runs ranked by %s (%s):\n%s", len(rows), metric, cfg.mode, table)
    log.info("written: %s, %s, %s", out / "compare.csv", out / "compare.md", out / "learning_curves.png")
    return rows


if __name__ == "__main__":
    run_command("compare", compare)
