"""Where (image, label) pairs come from: files on disk, paired by name, or the synthetic set."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from src.data.io import list_images, natural_sort_key, read_image, validate_image
from src.data.io.labels import check_label_values, map_label_values

log = logging.getLogger(__name__)

_ROLE_SUFFIX = re.compile(r"(_|-)(image|img|grey|gray|label|labels|mask|seg|gt)$", re.IGNORECASE)
_LABEL_SUFFIX = re.compile(r"(_|-)(label|labels|mask|gt)$", re.IGNORECASE)

PathSpec = str | Path | Sequence[str | Path]


def _expand(spec: PathSpec) -> list[Path]:
    """A file, folder, glob or list of them → naturally sorted list of files."""
    if isinstance(spec, str | Path):
        return list_images(spec)
    files: list[Path] = []
    for item in spec:
        files += list_images(item)
    return files


def pair_key(path: Path) -> str:
    """Name shared by an image and its label: ``N.tif`` and ``N_label.tif`` both give ``N``."""
    stem = path.name.split(".")[0]
    return _ROLE_SUFFIX.sub("", stem)


def pair_images_labels(images: PathSpec, labels: PathSpec | None = None) -> list[tuple[Path, Path | None]]:
    """Pair image files with label files.

    Pairs by name (``N.tif`` ↔ ``N_label.tif``, ``a_image.tif`` ↔ ``a_label.tif``) when every
    image finds its label that way; by sorted order, with a warning listing the pairs, only when
    none does (the counts must then agree). Mixed matching (some by name, the rest not) is
    refused: a misnamed file would otherwise be scored against another image's labels.
    Label-named files (``*_label``, ``*_mask``…) that a broad image glob catches are dropped
    from the images. Without ``labels`` every pair is ``(image, None)``.
    """
    image_files = _expand(images)
    label_files = _expand(labels) if labels is not None else []
    image_files = [f for f in image_files if not _LABEL_SUFFIX.search(f.name.split(".")[0])]
    if not image_files:
        raise FileNotFoundError(f"no image files found for images={images!r} (label files excluded)")
    if labels is None:
        return [(f, None) for f in image_files]
    image_set = set(image_files)
    by_key: dict[str, Path] = {}
    for f in label_files:  # a label-named file wins over a plain one with the same key
        if f in image_set or (pair_key(f) in by_key and not _LABEL_SUFFIX.search(f.name.split(".")[0])):
            continue
        by_key[pair_key(f)] = f
    if all(pair_key(f) in by_key for f in image_files):
        return [(f, by_key[pair_key(f)]) for f in image_files]
    matched = [f for f in image_files if pair_key(f) in by_key]
    if matched:  # some by name, the rest by order: a misnamed file would be scored silently
        unmatched = [f.name for f in image_files if pair_key(f) not in by_key]
        spare = [f.name for f in label_files if f not in {by_key[pair_key(m)] for m in matched}]
        raise ValueError(
            f"images {unmatched[:5]} have no label named like them (N.tif ↔ N_label.tif) while "
            f"{len(matched)} other image(s) do; refusing to pair the rest by sorted order "
            f"(labels left: {spare[:5]}). Rename the files so that every image finds its label")
    if len(image_files) != len(label_files):
        unmatched = [f.name for f in image_files if pair_key(f) not in by_key]
        raise ValueError(
            f"cannot pair {len(image_files)} images with {len(label_files)} labels: no label named "
            f"like {unmatched[:3]} (expected N.tif ↔ N_label.tif), and the counts differ for "
            "pairing by sorted order"
        )
    pairs = list(zip(sorted(image_files, key=natural_sort_key), label_files, strict=True))
    log.warning("no label file is named like its image: pairing %d images with labels by sorted "
                "order (%s); name them N.tif ↔ N_label.tif to pair by name",
                len(pairs), ", ".join(f"{i.name} ↔ {lab.name}" for i, lab in pairs[:3]))
    return pairs


@dataclass
class SyntheticVolumeSet:
    """Synthetic electrodes imaged like TXM nano-CT, generated on first use and cached.

    Files ``{split}_s{seed}_image.tif`` / ``_label.tif`` / ``.json`` appear in ``out_dir`` for
    every seed of ``train_seeds`` (split ``train``) and ``test_seeds`` (split ``test``).
    ``microstructure`` and ``imaging`` override fields of
    :class:`~src.simulation.microstructure.MicrostructureConfig` and :class:`~src.simulation.imaging.ImagingConfig`.
    ``randomization`` (ranges, see :class:`~src.simulation.randomization.DomainRandomization`)
    makes every seed draw its own microstructure and imaging on top of those (deterministic from
    the seed, so the cache by seed stays valid); the ranges are checked when the set is made.
    """

    out_dir: str | Path
    train_seeds: Sequence[int] = (0, 1)
    test_seeds: Sequence[int] = (100,)
    shape: Sequence[int] = (128, 128, 128)
    microstructure: dict = field(default_factory=dict)
    imaging: dict = field(default_factory=dict)
    randomization: dict | None = None
    progress: bool = True

    def __post_init__(self) -> None:
        self._randomizer = None
        if self.randomization:
            from src.config import to_plain
            from src.simulation.randomization import DomainRandomization

            self._randomizer = DomainRandomization(**to_plain(self.randomization))

    def __call__(self) -> list[dict]:
        """Generate whatever is missing; return the paths of every volume.

        The paths are dicts from :func:`~src.simulation.electrode_volumes.make_synthetic_volume`.
        """
        from src.simulation.electrode_volumes import make_synthetic_volume
        from src.simulation.imaging import ImagingConfig
        from src.simulation.microstructure import MicrostructureConfig

        shape = tuple(int(s) for s in self.shape)
        micro = MicrostructureConfig(shape=shape, **dict(self.microstructure))
        imaging = ImagingConfig(**dict(self.imaging))
        out = []
        jobs = [(split, seed) for split, seeds in (("train", self.train_seeds), ("test", self.test_seeds))
                for seed in seeds]
        for split, seed in tqdm(jobs, desc="synthetic volumes", disable=not self.progress or len(jobs) < 4):
            if self._randomizer is not None:
                micro, imaging = self._randomizer.configs(int(seed), shape, self.imaging, self.microstructure)
            out.append(make_synthetic_volume(self.out_dir, int(seed), micro, imaging, name=f"{split}_s{seed}",
                                             progress=self.progress and len(jobs) < 4))
        return out


def load_pair(
    image_path: Path, label_path: Path | None, num_classes: int,
    label_values: Sequence[int] | None = None, unlabelled_value: int | None = None,
    ignore_index: int | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Read and check an image and its labels.

    Checks: finite, non-constant image; same shape; labels
    within the phases. Returns the raw image (maybe memory-mapped) and labels as uint8.

    With ``ignore_index`` (sparse labels, scribbles) unlabelled voxels are allowed and come
    back as ``ignore_index``; ``label_values`` / ``unlabelled_value`` map stored values first
    (see :func:`~src.data.io.labels.map_label_values`, e.g. napari's 0 = unlabelled, 1..K).
    """
    image = read_image(image_path)
    validate_image(image, image_path)
    if label_path is None:
        return image, None
    label = read_image(label_path)
    if label.shape != image.shape:
        raise ValueError(
            f"shape mismatch: image {image_path} is {image.shape} but label {label_path} is {label.shape}"
        )
    if label_values is None and unlabelled_value is None and ignore_index is None:
        check_label_values(label, num_classes, label_path)
        return image, np.asarray(label, dtype=np.uint8)
    return image, map_label_values(label, num_classes, label_path, label_values, unlabelled_value, ignore_index)
