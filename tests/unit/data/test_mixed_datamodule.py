"""Mixed simulated + real labelled data in one DataModule (issue 19)."""

from __future__ import annotations

import numpy as np
import pytest

from src.data.io import write_tiff
from src.data.mixed import MixedSegmentationDataModule
from tests.helpers import blob_labels, grey_from_labels


@pytest.fixture
def two_sources(tmp_path):
    """A 3D 'simulated' volume whose labels are 0/2 and 2D 'real' slices whose labels are all 1."""
    lab3 = blob_labels((24, 40, 40), 0)
    lab3[lab3 == 1] = 2
    write_tiff(tmp_path / "sim" / "v_image.tif", grey_from_labels(lab3, 0))
    write_tiff(tmp_path / "sim" / "v_label.tif", lab3)
    for i in range(2):
        lab2 = np.ones((48, 120), np.uint8)
        write_tiff(tmp_path / "real" / f"{i}.tif", np.random.default_rng(i).random((48, 120)).astype(np.float32))
        write_tiff(tmp_path / "real" / f"{i}_label.tif", lab2)
    return tmp_path


def _dm(root, class_names=("NMC", "CBD", "pore"), weight=1.0, real_weight=1.0):
    return MixedSegmentationDataModule(
        images=f"{root}/sim/*_image.tif", labels=f"{root}/sim/*_label.tif", patch_size=32,
        samples_per_epoch=64, batch_size=8, val_max_tiles=32, augment=None, weight=weight,
        sources=[{"name": "real", "images": f"{root}/real/[0-9].tif", "labels": f"{root}/real/*_label.tif",
                  "class_names": list(class_names), "weight": real_weight}])


def _has_cbd(dm) -> list[bool]:
    return [bool((dm.train_set[i]["label"] == 1).any()) for i in range(len(dm.train_set))]


def test_mixed_patches_follow_the_source_weights(two_sources):
    dm = _dm(two_sources)
    dm.setup("fit")
    from_real = _has_cbd(dm)  # only the real slices have CBD (label 1)
    assert 0.2 < np.mean(from_real) < 0.8
    side = dm.train_set.patch_size
    assert all(dm.train_set[i]["image"].shape == (1, side, side) for i in range(4))
    val_labels = np.concatenate([dm.val_set[i]["label"].numpy().ravel() for i in range(len(dm.val_set))])
    assert {0, 1, 2} <= set(np.unique(val_labels))  # validation covers both sources
    only_real = _dm(two_sources, weight=0.0)
    only_real.setup("fit")
    assert all(_has_cbd(only_real))


def test_class_names_differing_between_sources_are_refused(two_sources):
    with pytest.raises(ValueError, match=r"data source 'real' has class_names \['pore', 'CBD', 'NMC'\]"):
        _dm(two_sources, class_names=("pore", "CBD", "NMC"))
    with pytest.raises(ValueError, match="weight must be >= 0"):
        _dm(two_sources, real_weight=-1)


def test_data_mixed_config_builds_the_mixed_datamodule():
    from hydra.utils import instantiate

    from tests.helpers import compose

    cfg = compose("train", ["data=mixed", "logger=none"])
    dm = instantiate(cfg.data)
    assert isinstance(dm, MixedSegmentationDataModule)
    assert dm.sources[0]["class_names"] == dm.class_names and dm.sources[0]["weight"] == 0.5
