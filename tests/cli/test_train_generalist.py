"""A seconds-long fit of experiment=synthetic_generalist through train.py (issue 19)."""

from __future__ import annotations

import json

import train
from tests.helpers import compose


def test_tiny_generalist_fit(tmp_path):
    data = tmp_path / "randomized"
    overrides = [
        "experiment=synthetic_generalist", "logger=csv",
        f"data.prepare.out_dir={data}", "data.prepare.shape=[48,32,32]", "data.prepare.randomization.imaging.n_angles=[16,48]",
        "+data.prepare.randomization.imaging.cbd_density_std=[0,0.6]",
        "data.prepare.train_seeds=[0,1]", "data.prepare.test_seeds=[]",
        "+data.prepare.progress=false",
        f"data.images={data}/train_s*_image.tif", f"data.labels={data}/train_s*_label.tif",
        "data.patch_size=32", "data.samples_per_epoch=8", "data.batch_size=4", "data.val_max_tiles=4",
        "trainer.max_epochs=1", "trainer.max_time=null", "trainer.enable_model_summary=false",
        "trainer.log_every_n_steps=1", f"paths.output_dir={tmp_path}/run", f"paths.log_dir={tmp_path}/logs",
    ]
    cfg = compose("train", overrides)
    assert cfg.trainer.precision == "bf16-mixed" and cfg.model.channels_last
    metrics = train.train(cfg)
    assert 0.0 <= metrics["val/miou"] <= 1.0 and metrics["train/loss_epoch"] > 0
    assert (tmp_path / "run" / "checkpoints" / "best.ckpt").is_file()
    params = [json.loads((data / f"train_s{s}.json").read_text())["parameters"] for s in (0, 1)]
    # each volume drew its own imaging and microstructure from the configured ranges
    for key in ("photons", "n_angles", "gamma", "halo_strength", "attenuation", "cbd_density_std"):
        assert params[0]["imaging"][key] != params[1]["imaging"][key], key
    assert 100 <= params[0]["imaging"]["photons"] <= 1e5
    assert params[0]["microstructure"]["voxel_size_nm"] != params[1]["microstructure"]["voxel_size_nm"]
    # fine-tuning with net_from_init rebuilds the checkpoint's net and takes its model name too
    from src.models.checkpoint import use_checkpoint_net

    ft = compose("train", ["experiment=segmentpy_generalist", "logger=none",
                           f"init_from={tmp_path}/run/checkpoints/best.ckpt"])
    assert ft.model.name == "lrcsnet"  # the recipe's own model group
    use_checkpoint_net(ft)
    assert ft.model.name == cfg.model.name == "monai_basicunet"
    assert ft.model.net._target_ == cfg.model.net._target_ and ft.model.net.out_channels == 3


def test_generalist_init_from_absent_is_a_clear_error(tmp_path):
    import pytest

    from src.models.checkpoint import CheckpointNotFoundError

    cfg = compose("train", ["experiment=segmentpy_generalist", "logger=none", f"paths.log_dir={tmp_path}",
                            f"paths.output_dir={tmp_path}/run"])
    assert cfg.init_from == f"{tmp_path}/pretrain/synthetic_generalist/checkpoints/best.ckpt"
    with pytest.raises(CheckpointNotFoundError, match="run the pretraining first"):
        train.train(cfg)
