"""Compare training runs offline: ``python compare.py runs=GLOB_OR_SWEEP_DIR metric=val/miou``.

Reads every run folder (``.hydra`` settings, CSV or TensorBoard metrics), prints a table of the
best and final metric per run with the settings that differ between runs, best first, and
writes ``compare.csv``, ``compare.md`` and ``learning_curves.png`` (curves overlaid) into
``output_dir``. The work is :func:`src.training.run_comparison.compare_runs`.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf

from src.cli import run_command
from src.training.run_comparison import compare_runs


def compare(cfg: DictConfig) -> list[dict[str, Any]]:
    """Rank the runs of ``cfg.runs`` by ``cfg.metric``; write the table and the curves; return the rows."""
    runs = OmegaConf.to_container(cfg.runs) if OmegaConf.is_list(cfg.runs) else str(cfg.runs)
    return compare_runs(runs, cfg.output_dir, metric=str(cfg.metric), mode=str(cfg.mode),
                        plot_metrics=None if cfg.plot_metrics is None else [str(m) for m in cfg.plot_metrics],
                        x_axis=str(cfg.x_axis), ignore=[str(i) for i in cfg.ignore])


if __name__ == "__main__":
    run_command("compare", compare)
