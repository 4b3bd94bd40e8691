"""Dashboards without an account: an MLflow tracking server on loopback receives two tiny runs,
checked through its REST API."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import compose, free_port, tiny_train_overrides

pytest.importorskip("mlflow", reason="MLflow comes with the track extra: pip install '.[track]'")


def api(base: str, path: str, payload: dict | None = None) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(f"{base}{path}", data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


@pytest.fixture
def mlflow_server(tmp_path):
    """``mlflow server`` with a SQLite store on 127.0.0.1 and a free port; yields its URL."""
    port = free_port()
    mlflow_cli = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    log = open(tmp_path / "server.log", "w")  # noqa: SIM115 (closed below)
    server = subprocess.Popen(
        [mlflow_cli, "server", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
         "--default-artifact-root", str(tmp_path / "artifacts"), "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if server.poll() is not None or time.time() > deadline:
                pytest.fail(f"mlflow server did not start: {(tmp_path / 'server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield base
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
        log.close()


def test_mlflow_server_receives_two_runs(mlflow_server, tiny_data, tmp_path, monkeypatch):
    import train

    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI: undo it after the test so later
    # subprocesses do not inherit this (then stopped) server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)

    for seed in (1, 2):
        overrides = tiny_train_overrides(tiny_data, tmp_path / f"run{seed}", logger="mlflow") + [
            f"logger.mlflow.tracking_uri={mlflow_server}", f"seed={seed}", "task_name=dashboard_test",
            "run_name=tiny_seed" + str(seed),
        ]
        train.train(compose("train", overrides))
    experiment = api(mlflow_server, "/api/2.0/mlflow/experiments/get-by-name?experiment_name=dashboard_test")
    exp_id = experiment["experiment"]["experiment_id"]
    runs = api(mlflow_server, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id]})["runs"]
    assert sorted(r["info"]["run_name"] for r in runs) == ["tiny_seed1", "tiny_seed2"]
    for run in runs:
        params = {p["key"]: p["value"] for p in run["data"]["params"]}
        assert params["seed"] in ("1", "2")  # the resolved config is logged
        tags = {t["key"]: t["value"] for t in run["data"]["tags"]}
        assert tags["group"] == "dashboard_test"
        query = urllib.parse.urlencode({"run_id": run["info"]["run_id"], "metric_key": "val/miou", "max_results": 1000})
        history = api(mlflow_server, f"/api/2.0/mlflow/metrics/get-history?{query}").get("metrics", [])
        assert len(history) == 2  # one point per epoch (max_epochs=2)
        assert all(0.0 <= m["value"] <= 1.0 for m in history)
        latest = {m["key"] for m in run["data"]["metrics"]}
        assert {"val/loss", "val/iou_CBD", "train/loss_epoch"} <= latest
