"""Sweeps: a grid multirun survives a crashing job and writes its summary; the Optuna sweeper
(SQLite) resumes after a SIGKILL; compare.py ranks local runs and plots their curves."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import compose, tiny_train_overrides

ROOT = Path(__file__).resolve().parents[2]


def cli_overrides(data_dir: Path, log_dir: Path) -> list[str]:
    """tiny_train_overrides for the command line (Hydra chooses the run folders)."""
    return [o for o in tiny_train_overrides(data_dir, log_dir) if not o.startswith(("paths.", "trainer.log_every"))] + [
        f"paths.log_dir={log_dir}", "callbacks.progress_bar.refresh_rate=0",
    ]


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_grid_sweep_survives_a_crash_and_summarises(tiny_data, tmp_path):
    """`train.py -m`: the job with an invalid learning rate fails, the other jobs run, the summary
    lists all with the error; compare.py on the sweep folder ranks and plots them."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "model.optimizer.lr=0.01,-1", "seed=1,2", *cli_overrides(tiny_data, tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "train" / "multiruns").iterdir()
    rows = read_csv(sweep_dir / "sweep_summary.csv")
    assert len(rows) == 4
    assert [r["status"] for r in rows] == ["completed", "completed", "failed", "failed"]  # best first
    assert all(r["model.optimizer.lr"] == "-1" and "Invalid learning rate" in r["error"] for r in rows[2:])
    assert float(rows[0]["val/miou"]) >= float(rows[1]["val/miou"]) > 0
    assert {r["seed"] for r in rows} == {"1", "2"}
    failed_job = sweep_dir / rows[2]["job"]
    assert "ValueError: Invalid learning rate" in (failed_job / "error.txt").read_text()
    assert "| failed |" in (sweep_dir / "sweep_summary.md").read_text()

    import compare

    out = tmp_path / "compare"
    table = compare.compare(compose("compare", [f"runs={sweep_dir}", f"output_dir={out}"]))
    assert [r["status"] for r in table][:2] == ["ok", "ok"]
    assert all(r["status"].startswith("failed: ValueError: Invalid learning rate") for r in table[2:])
    assert table[0]["best val/miou"] == pytest.approx(float(rows[0]["val/miou"]), abs=1e-6)
    assert set(table[0]) >= {"run", "model.optimizer.lr", "seed", "best val/miou", "final val/miou", "best epoch"}
    assert (out / "learning_curves.png").stat().st_size > 10_000
    assert read_csv(out / "compare.csv")[0]["run"] == table[0]["run"]


def optuna_trials(db: Path, study: str):
    import optuna

    return optuna.load_study(study_name=study, storage=f"sqlite:///{db}").get_trials(deepcopy=True)


@pytest.mark.slow
def test_optuna_sweep_resumes_after_sigkill(tiny_data, tmp_path):
    """hparams_search=synthetic_optuna: kill -9 during the second trial, run the same command
    again: the cut-off trial runs again with its parameters and the study reaches n_trials."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install '.[track]'")
    from optuna.trial import TrialState

    cmd = [sys.executable, "train.py", "hparams_search=synthetic_optuna", "hydra.sweeper.n_trials=3",
           *cli_overrides(tiny_data, tmp_path), "data.samples_per_epoch=64"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    sweep_dir = tmp_path / "synthetic_lrcsnet" / "optuna" / "synthetic_optuna"
    db = tmp_path / "optuna" / "synthetic_optuna.db"
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 240
        while not (sweep_dir / "1" / ".hydra" / "overrides.yaml").is_file():
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    before = optuna_trials(db, "synthetic_optuna")
    assert [t.state for t in before] == [TrialState.COMPLETE, TrialState.RUNNING]

    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    after = optuna_trials(db, "synthetic_optuna")
    states = [t.state for t in after]
    assert states == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE, TrialState.COMPLETE]
    assert after[2].params == before[1].params  # the cut-off trial, run again
    assert after[3].params != after[0].params  # the restarted seeded sampler does not repeat trial 0
    rows = read_csv(sweep_dir / "sweep_summary.csv")
    assert sorted(r["job"] for r in rows) == ["0", "1", "2", "3"]  # one folder per trial, none overwritten
    assert [r["status"] for r in rows if r["job"] == "1"] == ["interrupted"]
    best = max(t.value for t in after if t.state == TrialState.COMPLETE)
    assert float(rows[0]["val/miou"]) == pytest.approx(best)
    assert yaml.safe_load((sweep_dir / "optimization_results.yaml").read_text())["best_value"] == pytest.approx(best)


def test_segmentpy_search_space_composes():
    """The real-data search: experiment segmentpy_nmc, SQLite storage under logs/, the space."""
    pytest.importorskip("hydra_plugins.hydra_optuna_sweeper", reason="pip install '.[track]'")
    from src.config import compose_config

    cfg = compose_config("train", ["hparams_search=segmentpy_optuna", "paths.log_dir=/x/logs"], return_hydra_config=True)
    assert cfg.task_name == "segmentpy_nmc" and "segmentpy-nmc" in cfg.data.images[0]
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_ == "hydra_plugins.batteryct_sweepers.ResumableOptunaSweeper"
    assert sweeper.storage == "sqlite:////x/logs/optuna/segmentpy_optuna.db"
    assert sweeper.study_name == "segmentpy_optuna" and sweeper.direction == "maximize"
    assert cfg.optimized_metric == "val/miou"
    assert set(sweeper.params) == {"model", "model/loss", "model.optimizer.lr", "model.optimizer.weight_decay",
                                   "model.net.base_filters"}
    for loss in ["dice_ce", "ce", "dice", "dice_focal"]:  # every loss choice is a config that exists
        assert compose("train", [f"model/loss={loss}"]).model.loss._target_.startswith("monai.losses.")


def test_compare_reads_tensorboard_runs_and_explains_errors(tmp_path):
    """Runs with TensorBoard events only (no CSV), one without the metric; clear errors."""
    from torch.utils.tensorboard import SummaryWriter

    import compare

    for name, lr, values in [("a", 0.1, [0.2, 0.5, 0.4]), ("b", 0.01, [0.3, 0.6, 0.7]), ("c", 0.5, None)]:
        run = tmp_path / "runs" / name
        (run / ".hydra").mkdir(parents=True)
        (run / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"model": {"optimizer": {"lr": lr}}, "seed": 1,
                                                                    "paths": {"output_dir": str(run)}}))
        writer = SummaryWriter(run / "tensorboard")
        for epoch, v in enumerate(values or [0.9]):
            writer.add_scalar("val/miou" if values else "val/loss", v, global_step=10 * (epoch + 1))
            writer.add_scalar("epoch", epoch, global_step=10 * (epoch + 1))
        writer.close()
    out = tmp_path / "out"
    rows = compare.compare(compose("compare", [f"runs={tmp_path}/runs/*", f"output_dir={out}"]))
    assert [r["run"] for r in rows] == ["b", "a", "c"]
    assert [r["model.optimizer.lr"] for r in rows] == ["0.01", "0.1", "0.5"]  # paths.* ignored
    assert "seed" not in rows[0]
    assert rows[0]["best val/miou"] == pytest.approx(0.7) and rows[1]["best val/miou"] == pytest.approx(0.5)
    assert rows[1]["final val/miou"] == pytest.approx(0.4) and rows[1]["best epoch"] == 1
    assert rows[2]["status"] == "no val/miou"
    assert (out / "learning_curves.png").is_file()
    rows = compare.compare(compose("compare", [f"runs={tmp_path}/runs/*", "metric=val/loss", "mode=min",
                                               f"output_dir={out}"]))
    assert rows[0]["run"] == "c"
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        compare.compare(compose("compare", [f"runs={tmp_path}/nothing_here*", f"output_dir={out}"]))
    with pytest.raises(KeyError, match="val/dice_XYZ.*logged metrics.*val/miou"):
        compare.compare(compose("compare", [f"runs={tmp_path}/runs/*", "metric=val/dice_XYZ", f"output_dir={out}"]))


@pytest.mark.slow
def test_submitit_local_launcher_sweep_with_summary(tiny_data, tmp_path):
    """hydra/launcher=submitit_local: jobs run in their own processes (as on SLURM with
    submitit_slurm); the per-job records and the summary still come together."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install '.[track]'")
    result = subprocess.run(
        [sys.executable, "train.py", "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10",
         "model.optimizer.lr=0.01,-1", *cli_overrides(tiny_data, tmp_path), "trainer.max_epochs=1"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "train" / "multiruns").iterdir()
    rows = read_csv(sweep_dir / "sweep_summary.csv")
    assert [r["status"] for r in rows] == ["completed", "failed"]
    assert (sweep_dir / ".submitit").is_dir()
