"""Sparse labels (scribbles): value maps, unlabelled voxels, patch centres, replay weights."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from src.data.datamodule import SegmentationDataModule
from src.data.datasets import LabelledVolume, RandomPatchDataset
from src.data.io import write_tiff
from src.data.io.labels import map_label_values
from src.data.sources import load_pair
from tests.helpers import blob_labels, grey_from_labels


def test_napari_convention_maps_to_classes_and_ignore():
    stored = np.array([[0, 1, 2], [3, 0, 1]], np.uint8)  # 0 = unlabelled, 1..3 = classes
    out = map_label_values(stored, 3, "s.tif", label_values=[1, 2, 3], unlabelled_value=0)
    assert out.tolist() == [[255, 0, 1], [2, 255, 0]] and out.dtype == np.uint8
    # the project's own convention: classes 0..2, 255 unlabelled
    assert map_label_values(np.array([0, 2, 255]), 3, "s.tif").tolist() == [0, 2, 255]
    with pytest.raises(ValueError, match=r"s\.tif: label values \[7\] are neither a class"):
        map_label_values(np.array([1, 7, 0]), 3, "s.tif", [1, 2, 3], 0)
    with pytest.raises(ValueError, match="both a class"):
        map_label_values(stored, 3, "s.tif", [0, 1, 2], 0)
    with pytest.raises(ValueError, match="ignore_index=1 must lie in 3..255"):
        map_label_values(stored, 3, "s.tif", ignore_index=1)
    with pytest.raises(ValueError, match="outside the configured phases"):  # dense: no unlabelled allowed
        map_label_values(np.array([0, 255]), 3, "s.tif", ignore_index=None)


def test_scribble_file_of_another_shape_is_refused(tmp_path):
    write_tiff(tmp_path / "a.tif", np.random.default_rng(0).random((20, 30)).astype(np.float32))
    write_tiff(tmp_path / "a_label.tif", np.zeros((20, 31), np.uint8))
    with pytest.raises(ValueError, match=r"shape mismatch: image .*a\.tif is \(20, 30\) but label .*\(20, 31\)"):
        load_pair(tmp_path / "a.tif", tmp_path / "a_label.tif", 3, [1, 2, 3], 0, 255)


def _sparse_volume(name: str, shape=(64, 64), labelled: bool = True, seed: int = 0) -> LabelledVolume:
    lab = blob_labels(shape, seed)
    sparse = np.full(shape, 255, np.uint8)
    if labelled:
        sparse[30:34, 10:50] = lab[30:34, 10:50]
    return LabelledVolume(name, grey_from_labels(lab, seed), sparse)


def test_patches_centre_on_labelled_voxels_and_empty_slices_are_skipped(caplog):
    vols = [_sparse_volume("a"), _sparse_volume("empty", labelled=False, seed=1)]
    with caplog.at_level(logging.WARNING):
        ds = RandomPatchDataset(vols, 16, length=40, num_classes=3, ignore_index=255, seed=3)
    assert "empty: no labelled voxel" in caplog.text
    assert [v.name for v in ds.volumes] == ["a"] and ds.class_balanced
    for i in range(40):
        lab = ds[i]["label"][0].numpy()
        assert (lab != 255).any()  # never a patch without a labelled voxel
        assert lab[8, 8] != 255 or (lab != 255).sum() > 0
    with pytest.raises(ValueError, match="no labelled voxel in any training region"):
        RandomPatchDataset([vols[1]], 16, length=4, num_classes=3, ignore_index=255)


def test_replay_volumes_get_their_weight():
    new = _sparse_volume("new", (64, 64))
    old = LabelledVolume("old", new.image, blob_labels((64, 64), 5), weight=0.25)
    ds = RandomPatchDataset([new, old], 16, length=8, num_classes=3, ignore_index=255)
    assert ds.volume_weights.tolist() == pytest.approx([0.75, 0.25])


def test_datamodule_reads_napari_scribbles_and_replays_dense_labels(tmp_path):
    lab = blob_labels((48, 64), 7)
    write_tiff(tmp_path / "new" / "n.tif", grey_from_labels(lab, 7))
    scrib = np.zeros_like(lab)
    scrib[5:40:6, 4:60] = lab[5:40:6, 4:60] + 1
    write_tiff(tmp_path / "new" / "n_label.tif", scrib)
    write_tiff(tmp_path / "old" / "o.tif", grey_from_labels(lab, 8))
    write_tiff(tmp_path / "old" / "o_label.tif", lab)
    dm = SegmentationDataModule(
        images=str(tmp_path / "new" / "n.tif"), labels=str(tmp_path / "new" / "n_label.tif"),
        val_images=str(tmp_path / "new" / "n.tif"), val_labels=str(tmp_path / "new" / "n_label.tif"),
        label_values=[1, 2, 3], unlabelled_value=0, patch_size=32, samples_per_epoch=8, batch_size=4,
        replay_images=str(tmp_path / "old" / "o.tif"), replay_labels=str(tmp_path / "old" / "o_label.tif"),
        replay_weight=0.3)
    dm.setup()
    assert [v.name for v in dm.train_set.volumes] == ["n.tif", "o.tif"]
    assert dm.train_set.volume_weights.tolist() == pytest.approx([0.7, 0.3])
    val = dm.val_set.volumes[0].label
    assert set(np.unique(val)) <= {0, 1, 2, 255} and (val == 255).mean() > 0.5
    with pytest.raises(ValueError, match="replay_weight"):
        SegmentationDataModule(images="x", labels="y", replay_weight=0.5)
