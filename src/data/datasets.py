"""Patch datasets over labelled grey images (2D slices or 3D volumes) held in memory.

A :class:`LabelledVolume` is one normalised image with its labels and the region (a tuple of
slices) that a dataset may draw from, so training and validation use spatially separate parts
of the same volume.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

Region = tuple[slice, ...]

log = logging.getLogger(__name__)


@dataclass
class LabelledVolume:
    """A normalised grey image (y, x) or (z, y, x), float32, and its labels (same shape, uint8)."""

    name: str
    image: np.ndarray
    label: np.ndarray
    region: Region = ()
    class_coords: list[np.ndarray] = field(default_factory=list, repr=False)
    #: relative sampling weight of this volume (e.g. replay of old dense labels); None: by size
    weight: float | None = None

    def __post_init__(self) -> None:
        if not self.region:
            self.region = tuple(slice(0, n) for n in self.image.shape)

    @property
    def region_shape(self) -> tuple[int, ...]:
        """Extent of the region along each axis."""
        return tuple(s.stop - s.start for s in self.region)

    def crop(self, region: Region) -> LabelledVolume:
        """The same arrays restricted to ``region`` (absolute coordinates)."""
        return LabelledVolume(self.name, self.image, self.label, region, weight=self.weight)


def split_region(shape: Sequence[int], axis: int, val_fraction: float) -> tuple[Region, Region]:
    """Cut ``shape`` along ``axis`` into a training part (start) and a validation part (end)."""
    n = shape[axis]
    n_val = int(round(n * val_fraction))
    if not 0 < n_val < n:
        raise ValueError(
            f"val_fraction={val_fraction} leaves no training or no validation region along axis "
            f"{axis} of size {n}"
        )
    full = [slice(0, s) for s in shape]
    train, val = list(full), list(full)
    train[axis] = slice(0, n - n_val)
    val[axis] = slice(n - n_val, n)
    return tuple(train), tuple(val)


def _plane_axes(ndim: int, spatial_dims: int, axis: int) -> tuple[int, ...]:
    """Array axes a patch spans: all of them (3D patches, 2D images) or the plane ⟂ ``axis``."""
    if spatial_dims == ndim:
        return tuple(range(ndim))
    return tuple(a for a in range(ndim) if a != axis)


def _used_axes(ndim: int, spatial_dims: int, slice_axes: Sequence[int]) -> set[int]:
    """Array axes that patches of any allowed orientation span."""
    return {a for axis in slice_axes for a in _plane_axes(ndim, spatial_dims, axis)}


def _common_side(patch_size: int, extents: Sequence[int], size_multiple: int, names: Sequence[str]) -> int:
    """Return the patch side shared by all patches.

    ``patch_size`` clipped to the smallest region extent, rounded down to
    ``size_multiple`` (one shape for every patch, so patches batch together).
    """
    side = min([int(patch_size), *extents]) // size_multiple * size_multiple
    if side == 0:
        raise ValueError(
            f"regions of {list(names)} (extents {sorted(set(extents))}) are smaller than one "
            f"{size_multiple}-voxel patch; use larger images or a smaller data.val_fraction"
        )
    return side


def _as_sample(image: np.ndarray, label: np.ndarray) -> dict[str, np.ndarray]:
    return {"image": image[None].astype(np.float32, copy=True), "label": label[None].astype(np.int64)}


class RandomPatchDataset(Dataset):
    """Random patches, reproducible from ``(seed, index)``.

    Args:
        volumes: training volumes with their regions.
        patch_size: side of a patch in voxels (clipped to the region where it is smaller).
        spatial_dims: 2 (slices from any of ``axes`` of a 3D volume) or 3 (cubes).
        axes: for 2D patches of 3D volumes, the axes slices are taken along.
        length: samples per epoch.
        class_balanced: centre each patch on a voxel of a phase drawn uniformly among the
            phases present, so thin phases (CBD) are seen as often as the others. Sparse
            labels (voxels equal to ``ignore_index``) are always sampled this way: patches are
            centred on labelled voxels only; a volume (region) without any labelled voxel is
            skipped with a warning.
        transform: augmentation applied to {"image", "label"} (channel-first arrays).
        seed: base seed; the sample for index ``i`` depends only on ``(seed, i)``.
    """

    def __init__(
        self,
        volumes: Sequence[LabelledVolume],
        patch_size: int,
        spatial_dims: int = 2,
        axes: Sequence[int] = (0, 1, 2),
        length: int = 1024,
        class_balanced: bool = False,
        num_classes: int = 3,
        transform=None,
        seed: int = 0,
        size_multiple: int = 16,
        ignore_index: int | None = None,
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        self.ignore_index = ignore_index
        self.sparse = ignore_index is not None and any(np.any(v.label[v.region] == ignore_index) for v in volumes)
        if self.sparse:
            class_balanced = True  # sparse labels: centres on labelled voxels only
        self.num_classes = num_classes
        if class_balanced:
            volumes = self._labelled_only(volumes, seed)
        for v in volumes:
            if v.image.ndim < spatial_dims:
                raise ValueError(f"{v.name}: a {v.image.ndim}D image cannot give {spatial_dims}D patches")
        self.volumes = list(volumes)
        self.spatial_dims = spatial_dims
        self.patch_size = _common_side(
            patch_size, [v.region_shape[a] for v in self.volumes for a in _used_axes(v.image.ndim, spatial_dims, axes)],
            size_multiple, [v.name for v in self.volumes],
        )
        self.axes = tuple(axes)
        self.length = int(length)
        self.class_balanced = class_balanced
        self.transform = transform
        self.seed = int(seed)
        self.volume_weights = self._weights(self.volumes)

    @staticmethod
    def _weights(volumes: Sequence[LabelledVolume]) -> np.ndarray:
        """Return each volume's probability of being drawn.

        By region size, then scaled so volumes with a ``weight``
        (e.g. replayed old labels) get that share of the draws in total.
        """
        sizes = np.array([np.prod(v.region_shape) for v in volumes], dtype=np.float64)
        weighted = np.array([v.weight is not None for v in volumes])
        p = np.zeros(len(volumes))
        if (~weighted).any():
            p[~weighted] = sizes[~weighted] / sizes[~weighted].sum()
        if weighted.any():
            share = sum(float(v.weight) for v in volumes if v.weight is not None)
            share = min(max(share, 0.0), 1.0) if (~weighted).any() else 1.0
            w = sizes[weighted] / sizes[weighted].sum()
            p[weighted] = w * share
            p[~weighted] *= 1.0 - share
        return p / p.sum()

    def _labelled_only(self, volumes: Sequence[LabelledVolume], seed: int) -> list[LabelledVolume]:
        """Index the phases' voxels of every volume and keep those with labelled voxels.

        Drops (with a warning) those without any
        labelled voxel in their region, so the sampler never looks for a centre in them.
        """
        self.volumes = list(volumes)
        self.seed = int(seed)
        self._index_classes()
        kept = [v for v in self.volumes if any(len(c) for c in v.class_coords)]
        for v in self.volumes:
            if not any(v is k for k in kept):
                log.warning("%s: no labelled voxel in its training region %s: skipped", v.name,
                            [(s.start, s.stop) for s in v.region])
        if not kept:
            raise ValueError(f"no labelled voxel in any training region of {[v.name for v in self.volumes]} "
                             "(scribbles all outside the training part? check data.val_fraction)")
        return kept

    def _index_classes(self, max_per_class: int = 200_000) -> None:
        """Store a random subset of each phase's voxel coordinates inside each region."""
        rng = np.random.default_rng(self.seed)
        for v in self.volumes:
            lab = v.label[v.region]
            offset = np.array([s.start for s in v.region])
            v.class_coords = []
            for c in range(self.num_classes):
                flat = np.flatnonzero(lab == c)
                if flat.size > max_per_class:
                    flat = rng.choice(flat, max_per_class, replace=False)
                v.class_coords.append(np.stack(np.unravel_index(flat, lab.shape), 1) + offset)

    def __len__(self) -> int:
        return self.length

    def _start(self, rng: np.random.Generator, v: LabelledVolume, axes: tuple[int, ...],
               size: list[int]) -> tuple[list[int], np.ndarray | None]:
        """Draw a patch corner and the centre voxel it was drawn around.

        Corner of the patch along ``axes`` (absolute coordinates), inside the region, and the
        labelled centre voxel it was drawn around (None when not class-balanced).
        """
        lo = [v.region[a].start for a in axes]
        hi = [v.region[a].stop - s for a, s in zip(axes, size, strict=True)]
        if self.class_balanced:
            present = [c for c in v.class_coords if len(c)]
            coords = present[rng.integers(len(present))]
            centre = coords[rng.integers(len(coords))]
            return [int(np.clip(centre[a] - s // 2, l_, h)) for a, s, l_, h in zip(axes, size, lo, hi, strict=True)], centre
        return [int(rng.integers(l_, h + 1)) for l_, h in zip(lo, hi, strict=True)], None

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        rng = np.random.default_rng([self.seed, int(index)])
        v = self.volumes[rng.choice(len(self.volumes), p=self.volume_weights)]
        axis = int(rng.choice(self.axes)) if v.image.ndim > self.spatial_dims else -1
        axes = _plane_axes(v.image.ndim, self.spatial_dims, axis)
        size = [self.patch_size] * len(axes)
        start, centre = self._start(rng, v, axes, size)
        index_tuple: list = [None] * v.image.ndim
        for a, s0, s in zip(axes, start, size, strict=True):
            index_tuple[a] = slice(s0, s0 + s)
        if axis >= 0:  # one slice along `axis`, inside the region (through the drawn centre)
            layer = int(rng.integers(v.region[axis].start, v.region[axis].stop))
            index_tuple[axis] = int(centre[axis]) if self.sparse and centre is not None else layer
        sample = _as_sample(v.image[tuple(index_tuple)], v.label[tuple(index_tuple)])
        if self.transform is not None:
            self.transform.set_random_state(seed=int(rng.integers(2**31)))
            sample = self.transform(sample)
        return {k: torch.as_tensor(np.ascontiguousarray(np.asarray(x))) for k, x in sample.items()}


class TilePatchDataset(Dataset):
    """Deterministic tiles covering the validation regions.

    2D models see slices along ``axis`` (default 0) of 3D volumes cut into tiles; 3D models see
    3D tiles. All tiles share one shape: ``patch_size`` clipped to the smallest region and
    rounded down to ``size_multiple``. At most ``max_tiles`` tiles, taken evenly.
    """

    def __init__(
        self,
        volumes: Sequence[LabelledVolume],
        patch_size: int,
        spatial_dims: int = 2,
        axis: int = 0,
        max_tiles: int | None = 256,
        size_multiple: int = 16,
    ) -> None:
        self.volumes = list(volumes)
        self.spatial_dims = spatial_dims
        plane = [_plane_axes(v.image.ndim, spatial_dims, axis) for v in self.volumes]
        n_axes = {len(p) for p in plane}
        if len(n_axes) != 1:
            raise ValueError("validation volumes mix 2D and 3D images; give them separately")
        k = n_axes.pop()
        tile = [
            _common_side(patch_size, [v.region_shape[p[i]] for v, p in zip(self.volumes, plane, strict=True)],
                         size_multiple, [v.name for v in self.volumes])
            for i in range(k)
        ]
        self.tile = tile
        self.items: list[tuple[int, tuple]] = []
        for vi, (v, axes) in enumerate(zip(self.volumes, plane, strict=True)):
            starts = []
            for a, side in zip(axes, tile, strict=True):
                lo, hi = v.region[a].start, v.region[a].stop
                s = list(range(lo, hi - side + 1, side))
                if s[-1] + side < hi:
                    s.append(hi - side)
                starts.append(s)
            others = [a for a in range(v.image.ndim) if a not in axes]
            layers = [range(v.region[a].start, v.region[a].stop) for a in others]
            for corner in np.array(np.meshgrid(*starts, *layers, indexing="ij")).reshape(v.image.ndim, -1).T:
                idx: list = [None] * v.image.ndim
                for a, c, side in zip(axes, corner[: len(axes)], tile, strict=True):
                    idx[a] = slice(int(c), int(c) + side)
                for a, c in zip(others, corner[len(axes):], strict=True):
                    idx[a] = int(c)
                self.items.append((vi, tuple(idx)))
        if max_tiles is not None and len(self.items) > max_tiles:
            keep = np.linspace(0, len(self.items) - 1, max_tiles).round().astype(int)
            self.items = [self.items[i] for i in keep]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        vi, idx = self.items[index]
        v = self.volumes[vi]
        sample = _as_sample(v.image[idx], v.label[idx])
        return {k: torch.from_numpy(x) for k, x in sample.items()}


class EpochSampler(Sampler[int]):
    """Indices ``epoch * n … epoch * n + n - 1`` so every epoch draws fresh, reproducible patches.

    Lightning calls :meth:`set_epoch` at the start of each training epoch (also after resuming).
    """

    def __init__(self, length: int) -> None:
        self.length = length
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch that seeds the next iteration's order."""
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.epoch * self.length, (self.epoch + 1) * self.length))

    def __len__(self) -> int:
        return self.length
