"""Hydra sweeps: a summary table at the end of every multirun and an Optuna sweeper that resumes.

* :class:`SweepSummary` (a Hydra callback, in ``conf/hydra/default.yaml``): each job leaves
  ``job_result.json`` in its folder (overrides, metric, status, error); at the end of the
  multirun ``sweep_summary.csv`` / ``sweep_summary.md`` list every job of the sweep folder,
  best first, failed jobs with their error.
* ``hydra_plugins.batteryct_sweepers.ResumableOptunaSweeper`` (Hydra loads sweepers only from
  the ``hydra_plugins`` package): the Optuna sweeper whose SQLite study continues when the same
  command is run again after an interruption.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from src.training.run_comparison import (
    ERROR_FILE,
    format_setting,
    markdown_table,
    parse_overrides,
    sort_key,
    write_rows_csv,
)

log = logging.getLogger(__name__)

JOB_RESULT = "job_result.json"
__all__ = ["ERROR_FILE", "JOB_RESULT", "SweepSummary", "in_multirun", "write_sweep_summary"]


def in_multirun() -> bool:
    """True inside a Hydra multirun job (``-m``)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def job_record(job_return: JobReturn, output_dir: Path, metric: str) -> dict[str, Any]:
    """What a job leaves for the sweep summary: number, overrides, metric value, status, error."""
    record: dict[str, Any] = {
        "job": int(job_return.hydra_cfg.hydra.job.num) if job_return.hydra_cfg else None,
        "overrides": list(job_return.overrides or []),
        "metric": metric,
        "value": math.nan,
        "status": "completed",
        "error": "",
        "dir": str(output_dir),
    }
    if job_return.status == JobStatus.FAILED:
        err = job_return._return_value
        record.update(status="failed", error=f"{type(err).__name__}: {err}")
    elif (output_dir / ERROR_FILE).is_file():  # train.py caught it so that the sweep goes on
        lines = [ln for ln in (output_dir / ERROR_FILE).read_text(encoding="utf-8").splitlines() if ln.strip()]
        record.update(status="failed", error=lines[-1].strip() if lines else "failed")
    else:
        value = job_return._return_value
        try:
            record["value"] = float(value) if value is not None else math.nan
        except (TypeError, ValueError):
            record["value"] = math.nan
        if math.isnan(record["value"]):
            record["status"] = f"completed, no {metric}"
    return record


def summary_rows(records: list[dict[str, Any]], mode: str = "max") -> list[dict[str, Any]]:
    """Job records → table rows, best first (failed jobs last).

    Columns: job, the overrides that differ between jobs, the metric, status and error.
    """
    parsed = [parse_overrides(r["overrides"]) for r in records]
    keys = list(dict.fromkeys(k for p in parsed for k in p))
    varying = [k for k in keys if len({p.get(k) for p in parsed}) > 1] or keys
    rows = []
    for record, ov in zip(records, parsed, strict=True):
        rows.append({"job": record["job"], **{k: format_setting(ov.get(k)) for k in varying},
                     record["metric"]: record["value"], "status": record["status"], "error": record["error"]})
    metric = records[0]["metric"] if records else "value"
    return sorted(rows, key=lambda r: sort_key(r[metric], mode))


def write_sweep_summary(sweep_dir: str | Path, mode: str = "max") -> list[dict[str, Any]]:
    """Collect every ``job_result.json`` under ``sweep_dir`` into the sweep's summary.

    Write ``sweep_summary.csv`` and ``.md`` there; return the rows (empty when no job left a
    record).
    """
    import json

    from src.data.io import write_text

    sweep_dir = Path(sweep_dir)
    records = []
    for path in sorted(sweep_dir.glob(f"*/{JOB_RESULT}")):
        records.append(json.loads(path.read_text(encoding="utf-8")))
    for hydra_dir in sorted(sweep_dir.glob("*/.hydra")):  # jobs cut off before they ended
        job_dir = hydra_dir.parent
        if not (job_dir / JOB_RESULT).is_file():
            import yaml

            ov_file = hydra_dir / "overrides.yaml"
            overrides = (yaml.safe_load(ov_file.read_text(encoding="utf-8")) or []) if ov_file.is_file() else []
            records.append({"job": int(job_dir.name) if job_dir.name.isdigit() else None,
                            "overrides": overrides, "metric": records[0]["metric"] if records else "value",
                            "value": math.nan, "status": "interrupted", "error": "no result (killed?)",
                            "dir": str(job_dir)})
    records.sort(key=lambda r: (r["job"] is None, r["job"] or 0))
    if not records:
        log.warning("sweep %s: no job left a %s; no summary", sweep_dir, JOB_RESULT)
        return []
    rows = summary_rows(records, mode)
    write_rows_csv(rows, sweep_dir / "sweep_summary.csv")
    table = markdown_table(rows)
    write_text(sweep_dir / "sweep_summary.md", table + "\n")
    failed = sum(r["status"] == "failed" for r in records)
    log.info("sweep summary (%d jobs, %d failed), %s:\n%s", len(records), failed, sweep_dir / "sweep_summary.md", table)
    return rows


class SweepSummary(Callback):
    """Hydra callback: a record per job, the sweep's summary table at the end of the multirun.

    Args:
        metric_key: the config key naming the job's return value (``optimized_metric``).
        mode: ``max`` or ``min``, which end of the metric is best (table order).
    """

    def __init__(self, metric_key: str = "optimized_metric", mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"SweepSummary mode must be max or min, got {mode!r}")
        self.metric_key = metric_key
        self.mode = mode

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        """In a multirun, write the job's record (``job_result.json``) to its output folder."""
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        from src.data.io import to_jsonable, write_json

        hydra_cfg = job_return.hydra_cfg.hydra if job_return.hydra_cfg else HydraConfig.get()
        if hydra_cfg.mode != RunMode.MULTIRUN:
            return
        output_dir = Path(hydra_cfg.runtime.output_dir)
        metric = str(config.get(self.metric_key, "value")) if config is not None else "value"
        write_json(output_dir / JOB_RESULT, to_jsonable(job_record(job_return, output_dir, metric)))

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        """Write the sweep's summary table (CSV and Markdown) to the sweep folder."""
        write_sweep_summary(config.hydra.sweep.dir, self.mode)
