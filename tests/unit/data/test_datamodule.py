"""Data pairing, normalisation, patches, spatial split, seeding, augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.data.datamodule import SegmentationDataModule
from src.data.datasets import (
    EpochSampler,
    LabelledVolume,
    RandomPatchDataset,
    TilePatchDataset,
    split_region,
)
from src.data.io import write_tiff
from src.data.sources import pair_images_labels, pair_key
from src.data.transforms import normalize_percentile, percentile_range, training_augmentation


def make_dm(tiny_data, **kw) -> SegmentationDataModule:
    args = dict(images=f"{tiny_data}/3d/vol*_image.tif", labels=f"{tiny_data}/3d/vol*_label.tif",
                patch_size=32, samples_per_epoch=32, batch_size=8, val_fraction=0.2, seed=3)
    args.update(kw)
    dm = SegmentationDataModule(**args)
    dm.setup("fit")
    return dm


def test_pairing_by_name_and_by_order(tmp_path):
    for name in ["b.tif", "b_label.tif", "a.tif", "a_label.tif"]:
        write_tiff(tmp_path / "n" / name, np.zeros((2, 2), np.uint8))
    pairs = pair_images_labels(f"{tmp_path}/n/*.tif", f"{tmp_path}/n/*_label.tif")
    assert [(i.name, lab.name) for i, lab in pairs] == [("a.tif", "a_label.tif"), ("b.tif", "b_label.tif")]
    for name in ["img2.tif", "img10.tif"]:
        write_tiff(tmp_path / "img" / name, np.zeros((2, 2), np.uint8))
    for name in ["seg_x.tif", "seg_y.tif"]:
        write_tiff(tmp_path / "lab" / name, np.zeros((2, 2), np.uint8))
    pairs = pair_images_labels(tmp_path / "img", tmp_path / "lab")
    assert [(i.name, lab.name) for i, lab in pairs] == [("img2.tif", "seg_x.tif"), ("img10.tif", "seg_y.tif")]
    # a folder holding both images and labels can be given as the labels
    pairs = pair_images_labels([tmp_path / "n" / "b.tif"], tmp_path / "n")
    assert [(i.name, lab.name) for i, lab in pairs] == [("b.tif", "b_label.tif")]
    assert pair_key(tmp_path / "train_s0_image.tif") == pair_key(tmp_path / "train_s0_label.tif") == "train_s0"
    with pytest.raises(FileNotFoundError, match="nothing"):
        pair_images_labels(f"{tmp_path}/nothing*.tif")


def test_mixed_pairing_is_refused(tmp_path):
    """One misnamed label (c.tif has no c_label.tif) must not be scored against b's labels."""
    for name in ["a.tif", "a_label.tif", "b.tif", "c.tif", "b_labels.tif", "x_label.tif"]:
        write_tiff(tmp_path / name, np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match=r"images \['c.tif'\] have no label named like them.*labels left: \['x_label.tif'\]"):
        pair_images_labels([tmp_path / "a.tif", tmp_path / "b.tif", tmp_path / "c.tif"],
                           [tmp_path / "a_label.tif", tmp_path / "x_label.tif", tmp_path / "b_labels.tif"])


def test_output_checks(tmp_path):
    from src.data.io.checks import check_output_dir, check_output_file

    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(NotADirectoryError, match="output_dir=.*file.txt is an existing file"):
        check_output_dir(tmp_path / "file.txt")
    with pytest.raises(NotADirectoryError, match="is a file, so the folder cannot be created"):
        check_output_dir(tmp_path / "file.txt" / "sub")
    assert check_output_dir(tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    with pytest.raises(IsADirectoryError, match="output=.* is an existing folder"):
        check_output_file(tmp_path, "output")
    with pytest.raises(ValueError, match="is also the input"):
        check_output_file(tmp_path / "file.txt", "output", inputs=[tmp_path / "file.txt"])
    with pytest.raises(FileExistsError, match="overwrite=true"):
        check_output_file(tmp_path / "file.txt", "output", overwrite=False)


def test_percentile_normalisation():
    x = np.arange(1000, dtype=np.float32).reshape(10, 100)
    lo, hi = percentile_range(x, 1, 99)
    assert lo == pytest.approx(9.99) and hi == pytest.approx(989.01)
    y = normalize_percentile(x, 1, 99)
    assert y.dtype == np.float32
    assert np.mean((y >= 0) & (y <= 1)) == pytest.approx(0.98, abs=0.002)
    with pytest.raises(ValueError, match="percentiles"):
        percentile_range(x, 50, 10)


def test_split_is_spatially_separate(tiny_data):
    dm = make_dm(tiny_data)
    for v in dm.train_set.volumes:
        assert v.region[0] == slice(0, 32)
    for _, idx in dm.val_set.items:
        z = idx[0]
        assert isinstance(z, int) and z >= 32  # 2D validation slices from the held-out z range
    # 2D images are split along x
    dm2 = make_dm(tiny_data, images=f"{tiny_data}/2d/[0-9].tif", labels=f"{tiny_data}/2d/*_label.tif", patch_size=16,
                  val_fraction=0.3)
    assert dm2.train_set.volumes[0].region == (slice(0, 40), slice(0, 39))
    with pytest.raises(ValueError, match="val_fraction"):
        split_region((10, 10), 0, 0.0)


def test_batches_shapes_and_axes(tiny_data):
    dm = make_dm(tiny_data)
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 1, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["label"].shape == (8, 1, 32, 32) and batch["label"].dtype == torch.int64
    val = next(iter(dm.val_dataloader()))
    assert val["image"].shape[1:] == (1, 32, 32)
    dm3 = make_dm(tiny_data, spatial_dims=3, patch_size=16, augment={"prob": 1.0}, val_fraction=0.4)
    assert next(iter(dm3.train_dataloader()))["image"].shape == (8, 1, 16, 16, 16)


def test_seeded_and_fresh_each_epoch(tiny_data):
    a, b = make_dm(tiny_data), make_dm(tiny_data)
    x1 = next(iter(a.train_dataloader()))["image"]
    np.testing.assert_array_equal(x1, next(iter(b.train_dataloader()))["image"])
    c = make_dm(tiny_data, seed=4)
    assert not torch.equal(x1, next(iter(c.train_dataloader()))["image"])
    sampler = EpochSampler(4)
    sampler.set_epoch(2)
    assert list(sampler) == [8, 9, 10, 11]


def test_class_balanced_sampling_sees_thin_phase_more(tiny_data):
    lab = np.zeros((1, 64, 64), np.uint8)
    lab[0, 30:33, 30:33] = 1  # a rare phase
    vol = LabelledVolume("v", np.random.default_rng(0).random((1, 64, 64)).astype(np.float32), lab)
    def rare_fraction(balanced: bool) -> float:
        ds = RandomPatchDataset([vol], 16, spatial_dims=2, axes=(0,), length=200, class_balanced=balanced, num_classes=2)
        return float(np.mean([(ds[i]["label"] == 1).any().item() for i in range(200)]))
    assert rare_fraction(True) > 0.4 > rare_fraction(False)


def test_augmentation_keeps_image_and_label_aligned():
    rng = np.random.default_rng(0)
    label = (rng.random((1, 16, 16)) > 0.5).astype(np.int64)
    image = label.astype(np.float32)
    aug = training_augmentation(2, prob=1.0, intensity_scale=0, intensity_shift=0, noise_std=0)
    changed = False
    for seed in range(6):
        aug.set_random_state(seed=seed)
        out = aug({"image": image.copy(), "label": label.copy()})
        np.testing.assert_array_equal(np.asarray(out["image"]), np.asarray(out["label"]).astype(np.float32))
        changed |= not np.array_equal(np.asarray(out["label"]), label)
    assert changed


def test_validation_tiles_cover_region():
    vol = LabelledVolume("v", np.zeros((2, 40, 50), np.float32), np.zeros((2, 40, 50), np.uint8))
    ds = TilePatchDataset([vol], 32, spatial_dims=2, max_tiles=None)
    covered = np.zeros((2, 40, 50), bool)
    for _, idx in ds.items:
        covered[idx] = True
    assert covered.all() and ds.tile == [32, 32]
