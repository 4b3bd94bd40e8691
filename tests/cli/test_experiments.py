"""Experiment configs: the real-data recipe composes, loads its documented split and trains."""

from __future__ import annotations

import numpy as np
import pytest

from src.analysis.segmenters import multi_otsu_segment
from tests.helpers import compose, shared_data

TRAIN_SLICES = ["1", "200", "103", "510", "929", "394", "546"]
HELD_OUT = {"400", "1098", "698"}


def test_segmentpy_nmc_split_and_tiny_fit(tmp_path):
    import hydra

    import train

    root = shared_data("segmentpy-nmc")
    overrides = [
        "experiment=segmentpy_nmc", "logger=csv", f"paths.output_dir={tmp_path}",
        f"paths.shared_data_dir={root.parent}",
        "trainer.max_epochs=1", "data.samples_per_epoch=8", "data.val_max_tiles=8", "data.patch_size=64",
    ]
    cfg = compose("train", overrides)
    dm = hydra.utils.instantiate(cfg.data)
    dm.setup("fit")
    names = [v.name for v in dm.train_set.volumes]
    assert names == [f"{n}.tif" for n in TRAIN_SLICES]
    assert not HELD_OUT & {n.split(".")[0] for n in names}
    for v in dm.train_set.volumes:  # validation is the right-most 20 % along x
        width = v.image.shape[1]
        assert v.region[1] == slice(0, width - round(0.2 * width))
    metrics = train.train(cfg)
    assert 0.0 <= metrics["val/miou"] <= 1.0


def test_multi_otsu_maps_intensity_classes_to_named_phases():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 3, (60, 60)).repeat(4, 0).repeat(4, 1)
    brightness = {0: 2.0, 1: 1.0, 2: 0.0}  # NMC bright, CBD middle, pore dark
    image = np.vectorize(brightness.get)(truth) + rng.normal(0, 0.05, truth.shape)
    seg = multi_otsu_segment(image, ["NMC", "CBD", "pore"], ("pore", "CBD", "NMC"), sigma=0)
    assert np.mean(seg == truth) > 0.99
    with pytest.raises(ValueError, match="must order all of class_names"):
        multi_otsu_segment(image, ["NMC", "CBD", "pore"], ("pore", "NMC"))


def test_kmeans_and_random_forest_baselines():
    from scipy import ndimage

    from src.analysis.segmenters import RandomForestSegmenter, filter_features, kmeans_segment
    from tests.helpers import blob_labels

    rng = np.random.default_rng(1)
    truth = blob_labels((64, 64), seed=5)
    image = np.array([2.0, 1.0, 0.0], np.float32)[truth] + rng.normal(0, 0.1, truth.shape).astype(np.float32)
    seg = kmeans_segment(image, ["NMC", "CBD", "pore"], ("pore", "CBD", "NMC"), sigma=0)
    assert np.mean(seg == truth) > 0.95
    assert filter_features(image, sigmas=(1.0, 2.0)).shape == (64, 64, 13)
    # a texture the grey level alone cannot separate: class 1 is noisy, class 0 smooth, same mean
    tex = np.where(truth == 1, rng.normal(1.0, 0.5, truth.shape), ndimage.gaussian_filter(np.ones_like(image), 1.0))
    tex = np.where(truth == 2, 0.0, tex).astype(np.float32)
    forest = RandomForestSegmenter(n_estimators=20, samples_per_class=500, sigmas=(1.0, 2.0)).fit([tex], [truth])
    test_truth = blob_labels((64, 64), seed=6)
    test = np.where(test_truth == 1, rng.normal(1.0, 0.5, test_truth.shape), 1.0)
    test = np.where(test_truth == 2, 0.0, test).astype(np.float32)
    assert np.mean(forest.predict(test) == test_truth) > 0.8
    assert forest.predict(np.stack([test, test])).shape == (2, 64, 64)


def test_segmentpy_unet_recipe_composes_and_asks_for_its_pretraining(tmp_path):
    import train
    from src.models.checkpoint import CheckpointNotFoundError

    root = shared_data("segmentpy-nmc")
    cfg = compose("train", ["experiment=segmentpy_unet", "logger=csv", f"paths.output_dir={tmp_path}",
                            f"paths.log_dir={tmp_path}/logs", f"paths.shared_data_dir={root.parent}"])
    assert cfg.model.name == "unet" and cfg.data.patch_size == 192
    assert [p.split("/")[-1] for p in cfg.data.images] == [f"{n}.tif" for n in TRAIN_SLICES]
    assert cfg.init_from.endswith("logs/pretrain/synthetic_unet/checkpoints/best.ckpt")
    with pytest.raises(CheckpointNotFoundError, match="run the pretraining first"):
        train.train(cfg)
