"""A DataModule that mixes labelled sources: simulated volumes and real labelled slices.

Each source is a set of (image, label) pairs with its own phase names; all must name the same
phases in the same order (label ``i`` means the same phase everywhere), else the DataModule
refuses to start. Training patches are drawn from source ``s`` with probability proportional to
its ``weight`` (inside a source, by region size, as :class:`~src.data.datasets.RandomPatchDataset`
does); validation tiles come from every source's held-out part.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from src.config import to_plain
from src.data.datamodule import SegmentationDataModule
from src.data.datasets import RandomPatchDataset, TilePatchDataset
from src.data.transforms import training_augmentation

__all__ = ["MixedSegmentationDataModule", "check_class_names"]


def check_class_names(reference: Sequence[str], other: Sequence[str], source: str) -> None:
    """Raise ValueError unless ``other`` names the same phases as ``reference``, in order.

    Args:
        reference: the DataModule's ``class_names``.
        other: a source's ``class_names``.
        source: the source's name, for the message.
    """
    if list(other) != list(reference):
        raise ValueError(
            f"data source {source!r} has class_names {list(other)} but the DataModule has "
            f"{list(reference)}: label values would mean different phases; remap that source's "
            "labels (or its class_names) so that both name the same phases in the same order")


class MixedSegmentationDataModule(SegmentationDataModule):
    """A segmentation DataModule that mixes its own pairs with extra labelled sources.

    :class:`~src.data.datamodule.SegmentationDataModule` over its own pairs (``images``,
    ``labels``: e.g. the simulator's volumes) plus ``sources`` (e.g. real labelled slices).

    Args:
        sources: one mapping per extra source: ``images``, ``labels`` (as for the main pairs),
            ``class_names`` (must equal ``class_names``), optional ``name`` and ``weight``
            (share of training patches, relative to ``weight``; default 1).
        weight: the main source's share of training patches.
        **kwargs: everything :class:`~src.data.datamodule.SegmentationDataModule` takes.

    Raises:
        ValueError: a source's class names differ from ``class_names`` (at construction, before
            any file is read), a source lacks images or labels, or a weight is negative.
    """

    def __init__(self, *args: Any, sources: Sequence[Mapping[str, Any]] = (), weight: float = 1.0,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sources = [dict(s) for s in to_plain(list(sources))]
        self.weight = float(weight)
        if self.weight < 0:
            raise ValueError(f"data.weight must be >= 0, got {self.weight}")
        for i, src in enumerate(self.sources):
            src.setdefault("name", f"sources[{i}]")
            for key in ("images", "labels", "class_names"):
                if src.get(key) is None:
                    raise ValueError(f"data source {src['name']!r}: missing {key!r}")
            check_class_names(self.class_names, src["class_names"], src["name"])
            src["weight"] = float(src.get("weight", 1.0))
            if src["weight"] < 0:
                raise ValueError(f"data source {src['name']!r}: weight must be >= 0, got {src['weight']}")
        if self.weight + sum(s["weight"] for s in self.sources) <= 0:
            raise ValueError("data.weight and the sources' weights are all 0: nothing to train on")

    def setup(self, stage: str | None = None) -> None:
        """Load every source and build the weighted training and the validation datasets (once)."""
        if self.train_set is not None:
            return
        groups = [(self.weight, self._load(self.images, self.labels))]
        groups += [(s["weight"], self._load(s["images"], s["labels"])) for s in self.sources]
        train, val, weights = [], [], []
        for w, volumes in groups:
            t, v = self._split(volumes)
            sizes = np.array([np.prod(x.region_shape) for x in t], dtype=np.float64)
            train += t
            val += v
            weights += list(w * sizes / sizes.sum())
        if self.val_images is not None:
            val = self._load(self.val_images, self.val_labels)
        transform = training_augmentation(self.spatial_dims, **self.augment) if self.augment is not None else None
        self.train_set = RandomPatchDataset(
            train, self.patch_size, self.spatial_dims, self.patch_axes, self.samples_per_epoch,
            self.class_balanced, len(self.class_names), transform, self.seed, self.size_multiple,
        )
        weights = np.asarray(weights)
        self.train_set.volume_weights = weights / weights.sum()
        self.val_set = TilePatchDataset(
            val, self.patch_size, self.spatial_dims, axis=0, max_tiles=self.val_max_tiles,
            size_multiple=self.size_multiple,
        )
