"""W&B mode resolution: never needs an account."""

from __future__ import annotations

import pytest

from src.training.tracking import resolve_wandb_mode, wandb_credentials_available


@pytest.fixture
def no_credentials(monkeypatch, tmp_path):
    for key in ["WANDB_API_KEY", "WANDB_MODE"]:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    return tmp_path / "netrc"


def test_offline_without_credentials(no_credentials):
    assert not wandb_credentials_available()
    assert resolve_wandb_mode(None) == "offline"
    assert resolve_wandb_mode("online") == "offline"


def test_online_with_key_or_netrc(no_credentials, monkeypatch):
    no_credentials.write_text("machine api.wandb.ai\n  login user\n  password abc123\n")
    assert resolve_wandb_mode(None) == "online"
    no_credentials.unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode(None) == "online"


def test_env_and_config_modes(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_wandb_mode(None) == "disabled"
    assert resolve_wandb_mode("offline") == "offline"
    with pytest.raises(ValueError, match="online, offline or disabled"):
        resolve_wandb_mode("sometimes")


def test_wandb_run_id_and_resume_dir(tmp_path):
    from src.training.tracking import run_dir_of_checkpoint, wandb_run_id_in

    assert wandb_run_id_in(tmp_path) is None
    for name in ["offline-run-20260101_100000-aaaa1111", "offline-run-20260102_090000-bbbb2222", "debug.log"]:
        (tmp_path / "wandb" / name).mkdir(parents=True)
    (tmp_path / "wandb" / "latest-run").symlink_to(tmp_path / "wandb" / "offline-run-20260101_100000-aaaa1111")
    assert wandb_run_id_in(tmp_path) == "bbbb2222"  # the newest run, not the symlink
    assert run_dir_of_checkpoint(None, tmp_path) is None
    assert run_dir_of_checkpoint("last", tmp_path) == tmp_path
    assert run_dir_of_checkpoint(tmp_path / "old" / "checkpoints" / "last.ckpt", tmp_path) == tmp_path / "old"


def test_sweep_run_identity():
    from omegaconf import OmegaConf

    from src.training.tracking import sweep_run_identity

    assert sweep_run_identity("lrcsnet", "train", ["a"], None) == ("lrcsnet", "train", ["a"])
    hydra_cfg = OmegaConf.create({
        "mode": "RunMode.MULTIRUN",
        "job": {"num": 3, "override_dirname": "model.optimizer.lr=0.01,seed=2"},
        "sweep": {"dir": "/x/logs/train/multiruns/2026-01-01_10-00-00"},
    })
    name, group, tags = sweep_run_identity("lrcsnet", "train", ["a"], hydra_cfg)
    assert name == "lrcsnet#3 model.optimizer.lr=0.01,seed=2"
    assert group == "train/2026-01-01_10-00-00"
    assert tags == ["a", "sweep"]
    hydra_cfg.mode = "RunMode.RUN"
    assert sweep_run_identity("lrcsnet", "train", [], hydra_cfg) == ("lrcsnet", "train", [])


def test_resumed_training_continues_the_wandb_run_with_checkpoint_artifact(tiny_data, tmp_path, monkeypatch):
    """Offline W&B: the restart from last.ckpt logs into the same run id; log_model=true keeps
    the checkpoint as an artifact in the offline run (uploaded by `wandb sync`)."""
    import train
    from tests.helpers import compose, tiny_train_overrides

    monkeypatch.setenv("WANDB_MODE", "offline")
    base = tiny_train_overrides(tiny_data, tmp_path, logger="wandb") + ["logger.wandb.log_model=true"]
    train.train(compose("train", base + ["trainer.max_epochs=1"]))
    first = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(first) == 1
    run_id = first[0].name.split("-")[3]  # offline-run-<time>-<id>, "-1" appended when the second is shared
    import time

    deadline = time.time() + 60  # the W&B service writes the offline run file asynchronously
    while f"model-{run_id}".encode() not in b"".join(f.read_bytes() for f in first[0].glob("*.wandb")):
        assert time.time() < deadline, "no checkpoint artifact record in the offline run"
        time.sleep(0.5)
    train.train(compose("train", base + ["trainer.max_epochs=2", f"ckpt_path={tmp_path}/checkpoints/last.ckpt"]))
    runs = sorted((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 2
    assert {r.name.split("-")[3] for r in runs} == {run_id}


def test_orthogonal_slices_of_3d_patches():
    import numpy as np

    from src.training.callbacks import orthogonal_slices

    batch = np.arange(2 * 4 * 6 * 8).reshape(2, 4, 6, 8)
    planes = orthogonal_slices(batch)
    assert [p.shape for p in planes] == [(6, 8), (4, 8), (4, 6)] * 2
    np.testing.assert_array_equal(planes[3], batch[1, 2])
    np.testing.assert_array_equal(planes[4], batch[1, :, 3])
    np.testing.assert_array_equal(planes[5], batch[1, :, :, 4])


def test_restart_in_same_run_folder_continues_wandb_run(tmp_path, monkeypatch):
    """A requeued job (same folder, no ckpt_path: Lightning resumes hpc_ckpt) keeps its W&B run."""
    from src.training.tracking import make_wandb_logger

    monkeypatch.setenv("WANDB_MODE", "offline")
    fresh = make_wandb_logger(save_dir=tmp_path / "new")
    assert fresh._wandb_init.get("id") is None
    (tmp_path / "old" / "wandb" / "offline-run-20260101_100000-abcd1234").mkdir(parents=True)
    again = make_wandb_logger(save_dir=tmp_path / "old")
    assert again._wandb_init["id"] == "abcd1234" and again._wandb_init["resume"] == "allow"
    other = make_wandb_logger(save_dir=tmp_path / "new", resume_from=tmp_path / "old" / "checkpoints" / "x.ckpt")
    assert other._wandb_init["id"] == "abcd1234"
