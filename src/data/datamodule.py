"""LightningDataModule over (image, label) pairs: 2D slices or 3D volumes, patch-based."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from src.config import to_plain
from src.data.datasets import (
    EpochSampler,
    LabelledVolume,
    RandomPatchDataset,
    TilePatchDataset,
    split_region,
)
from src.data.sources import PathSpec, load_pair, pair_images_labels
from src.data.transforms import normalization, normalize_percentile, training_augmentation


class SegmentationDataModule(pl.LightningDataModule):
    """Random training patches and deterministic validation tiles from labelled images.

    Args:
        images, labels: files, folders, globs or lists of them (paired by name or order).
        class_names: phase names; label ``i`` is ``class_names[i]``.
        val_images, val_labels: separate validation images; when absent, the last
            ``val_fraction`` of every training image along ``split_axis`` (default: z for 3D
            volumes, x for 2D images) is held out, so validation is spatially separate.
        spatial_dims: 2 (slices, from any of ``patch_axes`` of a 3D volume) or 3 (cubes).
        patch_size: patch side in voxels (a multiple of the net's size multiple).
        samples_per_epoch: random patches per training epoch.
        val_max_tiles: at most this many validation tiles (taken evenly).
        class_balanced: centre patches on voxels of a uniformly drawn phase.
        normalize: percentiles {lower, upper} mapped to 0 and 1, per image.
        augment: keyword arguments of :func:`~src.data.transforms.training_augmentation`,
            or None for no augmentation.
        prepare: a callable run once in ``prepare_data`` (e.g. generating synthetic volumes).
        seed: the seed of patch sampling and augmentation.
        size_multiple: patches clipped to small images are rounded down to this multiple.
        ignore_index: label value of unlabelled voxels (sparse labels, scribbles): no loss, no
            metric, never a patch centre. None: every voxel must be labelled.
        label_values: stored value of each phase in the label files (``[1, 2, 3]`` for
            napari/ilastik scribbles), or None: stored values are the phases.
        unlabelled_value: a stored value meaning "unlabelled" (``0`` for napari/ilastik), or None.
        replay_images, replay_labels: old dense labelled images mixed into training (fine-tuning
            on scribbles of a new volume without forgetting), with ``replay_weight`` of the draws.
        replay_weight: the share of training patches drawn from the replay images (0..1).
    """

    def __init__(
        self,
        images: PathSpec,
        labels: PathSpec,
        class_names: Sequence[str] = ("NMC", "CBD", "pore"),
        val_images: PathSpec | None = None,
        val_labels: PathSpec | None = None,
        val_fraction: float = 0.2,
        split_axis: int | None = None,
        spatial_dims: int = 2,
        patch_size: int = 64,
        patch_axes: Sequence[int] = (0, 1, 2),
        samples_per_epoch: int = 2048,
        val_max_tiles: int | None = 256,
        batch_size: int = 16,
        num_workers: int = 0,
        class_balanced: bool = False,
        normalize: dict[str, float] | None = None,
        augment: dict[str, Any] | None = None,
        prepare: Callable[[], Any] | None = None,
        seed: int = 0,
        size_multiple: int = 16,
        ignore_index: int | None = 255,
        label_values: Sequence[int] | None = None,
        unlabelled_value: int | None = None,
        replay_images: PathSpec | None = None,
        replay_labels: PathSpec | None = None,
        replay_weight: float = 0.0,
    ) -> None:
        super().__init__()
        images, labels, val_images, val_labels, class_names, patch_axes, normalize, augment = map(
            to_plain, (images, labels, val_images, val_labels, class_names, patch_axes, normalize, augment)
        )
        label_values, replay_images, replay_labels = map(to_plain, (label_values, replay_images, replay_labels))
        # stored in checkpoints, so evaluate.py normalises exactly as training did
        self.save_hyperparameters(ignore=["prepare"], logger=False)
        if spatial_dims not in (2, 3):
            raise ValueError(f"data.spatial_dims must be 2 or 3, got {spatial_dims}")
        self.images, self.labels = images, labels
        self.val_images, self.val_labels = val_images, val_labels
        self.class_names = list(class_names)
        self.val_fraction = val_fraction
        self.split_axis = split_axis
        self.spatial_dims = spatial_dims
        self.patch_size = patch_size
        self.patch_axes = tuple(patch_axes)
        self.samples_per_epoch = samples_per_epoch
        self.val_max_tiles = val_max_tiles
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.class_balanced = class_balanced
        self.normalize = normalization(normalize)
        self.augment = dict(augment) if augment is not None else None
        self.prepare = prepare
        self.seed = seed
        self.size_multiple = size_multiple
        self.ignore_index = None if ignore_index is None else int(ignore_index)
        self.label_values = None if label_values is None else [int(v) for v in label_values]
        self.unlabelled_value = unlabelled_value
        self.replay_images, self.replay_labels = replay_images, replay_labels
        if not 0.0 <= float(replay_weight) < 1.0:
            raise ValueError(f"data.replay_weight={replay_weight} must lie in [0, 1)")
        if replay_weight and replay_images is None:
            raise ValueError("data.replay_weight > 0 needs data.replay_images and data.replay_labels")
        self.replay_weight = float(replay_weight)
        self.train_set: RandomPatchDataset | None = None
        self.val_set: TilePatchDataset | None = None

    def prepare_data(self) -> None:
        """Run the configured preparation step (e.g. generate the volumes), if any."""
        if self.prepare is not None:
            self.prepare()

    def _load(self, images: PathSpec, labels: PathSpec, mapped: bool = True) -> list[LabelledVolume]:
        """Read, check and normalise every image/label pair.

        All checks run before any training starts; ``mapped``: the label files use
        ``label_values`` / ``unlabelled_value``.
        """
        volumes = []
        for image_path, label_path in pair_images_labels(images, labels):
            image, label = load_pair(image_path, label_path, len(self.class_names),
                                     self.label_values if mapped else None,
                                     self.unlabelled_value if mapped else None, self.ignore_index)
            if image.ndim < self.spatial_dims:
                raise ValueError(f"{image_path}: {image.ndim}D image, but data.spatial_dims={self.spatial_dims}")
            image = normalize_percentile(image, self.normalize["lower"], self.normalize["upper"])
            volumes.append(LabelledVolume(Path(image_path).name, image, label))
        return volumes

    def _split(self, volumes: list) -> tuple[list, list]:
        """Each volume's training and validation regions (``val_fraction`` along ``split_axis``)."""
        train, val = [], []
        for v in volumes:
            axis = self.split_axis if self.split_axis is not None else (0 if v.image.ndim == 3 else v.image.ndim - 1)
            train_region, val_region = split_region(v.image.shape, axis, self.val_fraction)
            train.append(v.crop(train_region))
            val.append(v.crop(val_region))
        return train, val

    def setup(self, stage: str | None = None) -> None:
        """Load the volumes and build the training and validation patch datasets (once)."""
        if self.train_set is not None:
            return
        train = self._load(self.images, self.labels)
        if self.val_images is not None:
            val = self._load(self.val_images, self.val_labels)
        else:
            train, val = self._split(train)
        if self.replay_images is not None and self.replay_weight > 0:
            replay = self._load(self.replay_images, self.replay_labels, mapped=False)
            for v in replay:
                v.weight = self.replay_weight / len(replay)
            train = train + replay
        transform = training_augmentation(self.spatial_dims, **self.augment) if self.augment is not None else None
        self.train_set = RandomPatchDataset(
            train, self.patch_size, self.spatial_dims, self.patch_axes, self.samples_per_epoch,
            self.class_balanced, len(self.class_names), transform, self.seed, self.size_multiple,
            self.ignore_index,
        )
        self.val_set = TilePatchDataset(
            val, self.patch_size, self.spatial_dims, axis=0, max_tiles=self.val_max_tiles, size_multiple=self.size_multiple
        )

    def train_dataloader(self) -> DataLoader:
        """Return the loader of random training patches, reseeded each epoch."""
        return DataLoader(
            self.train_set, batch_size=self.batch_size, sampler=EpochSampler(len(self.train_set)),
            num_workers=self.num_workers, persistent_workers=self.num_workers > 0, drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        """Return the loader of validation tiles, in order.

        With several processes each takes a disjoint share, none
        padded or repeated (Lightning's default sampler would repeat tiles to even out the
        shares), so the confusion matrix reduced over processes equals one process's.
        """
        sampler = None
        if torch.distributed.is_available() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
            from pytorch_lightning.overrides.distributed import UnrepeatedDistributedSampler

            sampler = UnrepeatedDistributedSampler(self.val_set, shuffle=False)
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, sampler=sampler,
                          num_workers=self.num_workers)
