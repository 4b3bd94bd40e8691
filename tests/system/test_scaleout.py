"""Scale-out and faults: a real 2-process DDP fit (gloo) reduces validation metrics exactly and
only rank 0 writes; the same seed gives the same metrics; a SIGKILLed training continues from
last.ckpt; the SLURM launcher and sbatch script are well-formed."""

from __future__ import annotations

import csv
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import compose, free_port, tiny_train_overrides

ROOT = Path(__file__).resolve().parents[2]
# a model that leaves the all-one-phase start within one short epoch (so metrics can differ)
LEARNING = ["model=unet", "model.optimizer.lr=0.01", "data.samples_per_epoch=64"]


def cli_overrides(data_dir: Path, run_dir: Path, logger: str = "csv") -> list[str]:
    return [o for o in tiny_train_overrides(data_dir, run_dir, logger=logger) if not o.startswith("paths.output_dir")] + [
        f"hydra.run.dir={run_dir}", "callbacks.progress_bar.refresh_rate=0",
    ]


def csv_metric(run_dir: Path, key: str) -> list[float]:
    with open(run_dir / "csv" / "metrics.csv", newline="") as fh:
        return [float(r[key]) for r in csv.DictReader(fh) if r.get(key)]


def test_ddp_reduces_validation_exactly_and_only_rank0_writes(tiny_data, tmp_path):
    """trainer=ddp_cpu, 2 processes: val/miou of the DDP fit equals one process validating the
    same weights on the same tiles; rank 1 writes nothing but its own text log."""
    run_dir = tmp_path / "run"
    audit = tmp_path / "audit"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline",
           "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "support"), os.environ.get("PYTHONPATH", "")]),
           "AUDIT_WRITES_UNDER": str(tmp_path), "AUDIT_WRITES_TO": str(audit)}
    env.pop("MLFLOW_TRACKING_URI", None)  # the run's own sqlite store, whatever an earlier test exported
    result = subprocess.run(
        [sys.executable, "train.py", *cli_overrides(tiny_data, run_dir, logger="many"), *LEARNING, "trainer=ddp_cpu",
         "trainer.max_epochs=1", "data.val_max_tiles=9"],  # 9 tiles: shares of 5 and 4, none repeated
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Starting with 2 processes" in result.stdout + result.stderr

    ddp_miou = csv_metric(run_dir, "val/miou")
    assert len(ddp_miou) == 1  # one row per epoch: one process logged
    assert sum(csv_metric(run_dir, f"val/iou_{c}")[0] > 0 for c in ("NMC", "CBD", "pore")) >= 2  # not one class
    ddp_loss = csv_metric(run_dir, "val/loss")

    import pytorch_lightning as pl

    from src.models.checkpoint import load_segmentation_checkpoint

    cfg = compose("train", tiny_train_overrides(tiny_data, tmp_path / "single") + [*LEARNING, "data.val_max_tiles=9"])
    import hydra

    datamodule = hydra.utils.instantiate(cfg.data)
    module, _ = load_segmentation_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    single = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                        enable_model_summary=False).validate(module, datamodule=datamodule, verbose=False)[0]
    assert ddp_miou[0] == pytest.approx(single["val/miou"], abs=1e-12)  # integer confusion counts: exact
    assert ddp_loss[0] == pytest.approx(single["val/loss"], rel=1e-6)  # tile-weighted mean, float sums

    rank0 = set((audit / "rank0.txt").read_text().split())
    rank1 = set((audit / "rank1.txt").read_text().split()) if (audit / "rank1.txt").exists() else set()
    assert any(p.endswith("checkpoints/last.ckpt") for p in rank0)
    assert any("/csv/" in p for p in rank0) and any("/tensorboard/" in p for p in rank0)
    assert any("/wandb/" in p for p in rank0) and any(p.endswith("/panels/val_epoch000.png") for p in rank0)
    assert rank1 <= {str(run_dir / "train_rank1.log")}, sorted(rank1)
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    with sqlite3.connect(run_dir / "logs" / "mlflow.db") as db:  # SQLite writes from C: count the runs
        assert db.execute("select count(*) from runs").fetchone()[0] == 1


def test_same_seed_same_metrics(tiny_data, tmp_path):
    import train

    runs = []
    for name in ("a", "b", "a_again"):
        seed = 3 if name.startswith("a") else 4
        runs.append(train.train(compose("train", tiny_train_overrides(tiny_data, tmp_path / name) + [f"seed={seed}"])))
    keys = ["val/miou", "val/loss", "val/iou_CBD", "train/loss_epoch"]
    assert {k: runs[0][k] for k in keys} == {k: runs[2][k] for k in keys}  # bit-identical on CPU
    assert runs[0]["val/loss"] != runs[1]["val/loss"]  # and the seed matters
    a = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    b = torch.load(tmp_path / "a_again" / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigkill_then_restart_from_last_continues_at_saved_step(tiny_data, tmp_path):
    """kill -9 once last.ckpt exists (checkpoint every 2 steps), then ckpt_path=last in the same
    run folder: training continues from the saved step to the end, not from 0."""
    run_dir = tmp_path / "run"
    last = run_dir / "checkpoints" / "last.ckpt"
    cmd = [sys.executable, "train.py", *cli_overrides(tiny_data, run_dir), "trainer.max_epochs=2",
           "data.samples_per_epoch=40", "+callbacks.model_checkpoint.every_n_train_steps=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    with open(tmp_path / "first.log", "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 240
        while not last.is_file():
            assert proc.poll() is None and time.time() < deadline, (tmp_path / "first.log").read_text()[-3000:]
            time.sleep(0.02)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    saved = torch.load(last, weights_only=False)["global_step"]
    steps_total = 2 * 40 // 4
    assert 0 < saved < steps_total, "the kill came after training ended: nothing to resume"

    (run_dir / "csv").rename(run_dir / "csv_before_kill")  # the restart's metrics alone
    result = subprocess.run(cmd + ["ckpt_path=last"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"Restoring states from the checkpoint path at {last}" in result.stdout + result.stderr
    final = torch.load(last, weights_only=False)
    assert final["global_step"] == steps_total  # all steps of max_epochs=2 done
    with open(run_dir / "csv" / "metrics.csv", newline="") as fh:
        train_steps = [int(r["step"]) for r in csv.DictReader(fh) if r.get("train/loss_step")]
    assert len(train_steps) == steps_total - saved  # only the steps after the saved one were run
    assert min(train_steps) >= saved - 1


def test_wandb_sweep_example_gives_valid_hydra_overrides():
    """scripts/wandb_sweep.yaml: the agent's command (fixed args + `key=value` per parameter)
    composes with the first and with the last value of every parameter (range ends)."""
    import yaml

    sweep = yaml.safe_load((ROOT / "scripts" / "wandb_sweep.yaml").read_text())
    assert sweep["program"] == "train.py" and sweep["metric"] == {"name": "val/miou", "goal": "maximize"}
    fixed = [a for a in sweep["command"] if not a.startswith("${")]
    for end in (0, -1):
        chosen = {k: (spec["values"][end] if "values" in spec else spec["min" if end == 0 else "max"])
                  for k, spec in sweep["parameters"].items()}
        cfg = compose("train", [*fixed, *(f"{k}={v}" for k, v in chosen.items())])
        assert cfg.task_name == "segmentpy_nmc" and cfg.model.name == chosen["model"]
        assert cfg.model.optimizer.lr == chosen["model.optimizer.lr"]
        assert cfg.model.optimizer.weight_decay == chosen["model.optimizer.weight_decay"]
        assert cfg.model.net.base_filters == chosen["model.net.base_filters"]
        assert cfg.model.loss == compose("train", [f"model/loss={chosen['model/loss']}"]).model.loss


def test_slurm_launcher_config():
    """hydra/launcher=slurm (submitit): one task and GPU per DDP process, nodes from the trainer."""
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install '.[track]'")
    from src.config import compose_config

    cfg = compose_config("train", ["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (2, 4, 4)
    assert launcher.max_num_timeout > 0 and launcher.signal_delay_s > 0  # requeued on time-out
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.sync_batchnorm


@pytest.mark.slow
def test_sbatch_script_runs_ddp_through_slurm_environment(tiny_data, tmp_path):
    """scripts/slurm_train.sbatch under a stand-in `srun` (2 local tasks with SLURM variables):
    Lightning's SLURMEnvironment makes them 2 DDP ranks on CPU, rank 0 writes the run."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        "#!/bin/bash\n# stand-in for srun on one machine: SLURM_NTASKS copies with task variables\n"
        "while [[ $1 == --* ]]; do shift; done\npids=()\n"
        "for ((i=0; i<SLURM_NTASKS; i++)); do SLURM_PROCID=$i SLURM_LOCALID=$i \"$@\" & pids+=($!); done\n"
        "rc=0; for p in \"${pids[@]}\"; do wait $p || rc=$?; done; exit $rc\n")
    (bin_dir / "srun").chmod(0o755)
    port = free_port()
    run_dir = tmp_path / "run"
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1",
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "batteryct-train", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
           "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_NODELIST": "localhost",
           "SLURM_SUBMIT_DIR": str(ROOT), "MASTER_PORT": str(port), "PYTHON": sys.executable, "RUN_DIR": str(run_dir)}
    overrides = [o for o in tiny_train_overrides(tiny_data, run_dir) if not o.startswith("paths.output_dir")]
    result = subprocess.run(
        ["bash", "scripts/slurm_train.sbatch", *overrides, "trainer.accelerator=cpu", "trainer.sync_batchnorm=false",
         "trainer.max_epochs=1", "callbacks.progress_bar.refresh_rate=0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "Starting with 2 processes" in out or "distributed_backend=gloo" in out
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / ".hydra" / "config.yaml").is_file()
    assert len(csv_metric(run_dir, "val/miou")) == 1 and (run_dir / "train_rank1.log").is_file()
