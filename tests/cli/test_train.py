"""train.py through real (tiny) fits: every model config, resume, CLI, W&B offline fallback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra.errors import MissingConfigException

from tests.helpers import compose, tiny_train_overrides

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("model", ["lrcsnet", "lrcsnet_deep", "unet", "monai_unet", "monai_basicunet"])
def test_train_each_2d_model(tiny_data, tmp_path, model):
    import train

    cfg = compose("train", tiny_train_overrides(tiny_data, tmp_path, model=model))
    metrics = train.train(cfg)
    for key in ["val/miou", "val/accuracy", "val/iou_NMC", "val/iou_CBD", "val/iou_pore", "val/dice_CBD", "val/loss"]:
        assert key in metrics, key
        assert 0.0 <= metrics[key] <= 1.0 or key == "val/loss"
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    assert (tmp_path / "checkpoints" / "last.ckpt").is_file()
    assert list((tmp_path / "panels").glob("val_epoch*.png"))
    ckpt = torch.load(tmp_path / "checkpoints" / "best.ckpt", weights_only=False)
    assert ckpt["hyper_parameters"]["name"] == model
    assert ckpt["datamodule_hyper_parameters"]["normalize"] == {"lower": 0.5, "upper": 99.5}


def test_train_unet3d(tiny_data, tmp_path):
    import train

    overrides = tiny_train_overrides(tiny_data, tmp_path, model="unet3d") + ["data.spatial_dims=3", "data.batch_size=2", "data.val_fraction=0.4"]
    metrics = train.train(compose("train", overrides))
    assert 0.0 <= metrics["val/miou"] <= 1.0
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()


def test_training_learns_tiny_problem(tiny_data, tmp_path):
    """A few hundred patches suffice for a clearly better-than-chance score on easy data."""
    import train

    overrides = tiny_train_overrides(tiny_data, tmp_path, model="unet") + [
        "trainer.max_epochs=6", "data.samples_per_epoch=64", "model.optimizer.lr=0.01",
    ]
    metrics = train.train(compose("train", overrides))
    assert metrics["val/miou"] > 0.5


def test_resume_from_last_checkpoint(tiny_data, tmp_path):
    import train

    base = tiny_train_overrides(tiny_data, tmp_path, model="lrcsnet")
    train.train(compose("train", base + ["trainer.max_epochs=1"]))
    last = tmp_path / "checkpoints" / "last.ckpt"
    step_1 = torch.load(last, weights_only=False)["global_step"]
    assert step_1 == 4  # 16 samples / batch 4
    train.train(compose("train", base + ["trainer.max_epochs=2", f"ckpt_path={last}"]))
    ckpt = torch.load(last, weights_only=False)
    assert ckpt["epoch"] == 1 and ckpt["global_step"] == 2 * step_1


def test_unknown_model_name_is_a_clear_error(tiny_data, tmp_path):
    with pytest.raises(MissingConfigException, match="model/no_such_net"):
        compose("train", tiny_train_overrides(tiny_data, tmp_path, model="no_such_net"))


def test_bad_training_labels_fail_before_training(tiny_data, tmp_path):
    import numpy as np

    import train
    from src.data.io import write_tiff

    bad = tmp_path / "bad"
    image = np.random.default_rng(0).random((40, 48, 48)).astype(np.float32)
    write_tiff(bad / "v_image.tif", image)
    write_tiff(bad / "v_label.tif", np.full((40, 48, 48), 5, np.uint8))
    overrides = tiny_train_overrides(tiny_data, tmp_path / "run") + [
        f"data.images={bad}/v_image.tif", f"data.labels={bad}/v_label.tif",
    ]
    with pytest.raises(ValueError, match=r"v_label.tif: label values \[5\] are neither a class"):
        train.train(compose("train", overrides))
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_cli_with_wandb_offline_fallback(tiny_data, tmp_path):
    """The real command line, default W&B logger, no account: runs offline and says how to sync."""
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB")}
    env.update(HOME=str(tmp_path), NETRC=str(tmp_path / "no-netrc"))
    overrides = [o for o in tiny_train_overrides(tiny_data, run_dir) if not o.startswith(("paths.output_dir", "logger="))]
    result = subprocess.run(
        [sys.executable, "train.py", *overrides, "trainer.max_epochs=1", f"hydra.run.dir={run_dir}"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wandb sync" in result.stderr + result.stdout
    assert (run_dir / "checkpoints" / "best.ckpt").is_file()
    assert list((run_dir / "wandb").glob("offline-run-*"))
    assert (run_dir / ".hydra" / "config.yaml").is_file()


@pytest.mark.parametrize("logger", ["tensorboard", "none", "many"])
def test_other_loggers(tiny_data, tmp_path, logger, monkeypatch):
    import train

    monkeypatch.setenv("WANDB_MODE", "offline")
    # mlflow.set_tracking_uri exports MLFLOW_TRACKING_URI into this process: undone after the test,
    # so that later subprocess runs do not log into this test's database
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    overrides = tiny_train_overrides(tiny_data, tmp_path, logger=logger) + ["trainer.max_epochs=1"]
    metrics = train.train(compose("train", overrides))
    assert "val/miou" in metrics
    if logger in ("tensorboard", "many"):
        assert list((tmp_path / "tensorboard").rglob("events.out.tfevents.*"))
    if logger == "many":
        assert (tmp_path / "csv" / "metrics.csv").is_file()
        assert list((tmp_path / "wandb").glob("offline-run-*"))
