"""The one label checker: integral values inside the phases ``0 .. n - 1``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["IGNORE_INDEX", "check_label_values", "map_label_values"]


def check_label_values(label: np.ndarray, num_classes: int, source: str | Path, allow_float: bool = True,
                       class_names: Sequence[str] | None = None) -> None:
    """Raise a ValueError naming ``source`` when ``label`` is not a label image of the phases.

    Args:
        label: label image or volume, any shape.
        num_classes: the number of phases; values must lie in ``0 .. num_classes - 1``.
        source: the file (or name) the labels came from, for the message.
        allow_float: accept float arrays holding whole numbers (labels read from a float
            TIFF); False: integer (or bool) dtypes only.
        class_names: the phases' names, for a message that names them and points at
            ``label_values`` (the statistics' wording); None: "the configured phases".

    Raises:
        ValueError: not integral, or values outside the phases (the first 10 named).
    """
    n = num_classes
    if not (np.issubdtype(label.dtype, np.integer) or np.issubdtype(label.dtype, np.bool_)):
        if not allow_float:
            raise ValueError(f"{source}: labels must be integers, got dtype {label.dtype} "
                             "(a grey-value image? segment it first)")
        if not np.all(np.mod(label, 1) == 0):
            raise ValueError(f"{source}: labels must be integers 0..{n - 1}, got dtype {label.dtype} with fractional values")
    lo, hi = label.min(), label.max()
    if lo < 0 or hi >= n:
        values = np.unique(label)
        bad = values[(values < 0) | (values >= n)][:10].tolist()
        if class_names is None:
            raise ValueError(f"{source}: label values {bad} are outside the configured phases "
                             f"0..{n - 1} ({n} classes)")
        raise ValueError(f"{source}: label values {bad} outside 0..{n - 1} for class_names "
                         f"{list(class_names)}; pass label_values to map stored values to phases")


#: the label value of an unlabelled voxel (sparse labels, scribbles): no loss, no metric
IGNORE_INDEX = 255


def map_label_values(label: np.ndarray, num_classes: int, source: str | Path,
                     label_values: Sequence[int] | None = None, unlabelled_value: int | None = None,
                     ignore_index: int | None = IGNORE_INDEX) -> np.ndarray:
    """Labels ``0 .. num_classes - 1`` (uint8) with unlabelled voxels set to ``ignore_index``.

    Sparse labels (scribbles) keep most voxels unlabelled. Two conventions are read: the
    project's (classes ``0 .. K - 1``, unlabelled = ``ignore_index``, 255 by default) and
    ilastik/napari's (0 = unlabelled, 1..K = classes: ``label_values=[1, 2, 3]``,
    ``unlabelled_value=0``).

    Args:
        label: stored label image or volume, any shape, integral values.
        num_classes: the number of phases K.
        source: the file the labels came from, for messages.
        label_values: the stored value of each phase (``label_values[i]`` → class ``i``), or
            None: stored values are the classes.
        unlabelled_value: a stored value meaning "unlabelled" (e.g. 0), or None.
        ignore_index: the value unlabelled voxels get (and a stored value meaning unlabelled),
            or None: dense labels, every voxel must be a class.

    Returns:
        uint8 array of ``label``'s shape: classes, and ``ignore_index`` where unlabelled.

    Raises:
        ValueError: a stored value that is neither a phase nor unlabelled (the values named),
            or a mapping that is not one-to-one.
    """
    if ignore_index is not None and not num_classes <= int(ignore_index) <= 255:
        raise ValueError(f"data.ignore_index={ignore_index} must lie in {num_classes}..255 "
                         f"(above the {num_classes} classes, uint8)")
    if label_values is None and unlabelled_value is None:
        if ignore_index is None:
            check_label_values(label, num_classes, source)
            return np.asarray(label, dtype=np.uint8)
        label_values = list(range(num_classes))
    if label_values is None:
        label_values = list(range(num_classes))
    values = [int(v) for v in label_values]
    if len(values) != num_classes or len(set(values)) != num_classes:
        raise ValueError(f"{source}: label_values {values} must give {num_classes} distinct stored "
                         f"values, one per class")
    unlabelled = [int(v) for v in (unlabelled_value, ignore_index) if v is not None]
    if set(unlabelled) & set(values):
        raise ValueError(f"{source}: stored value(s) {sorted(set(unlabelled) & set(values))} are both a "
                         f"class (label_values {values}) and unlabelled (unlabelled_value / ignore_index)")
    arr = np.asarray(label)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_)):
        if not np.all(np.mod(arr, 1) == 0):
            raise ValueError(f"{source}: labels must be integers, got dtype {arr.dtype} with fractional values")
        arr = arr.astype(np.int64)
    stored = np.unique(arr)
    if stored.size and stored.min() < 0:
        raise ValueError(f"{source}: negative label values {[int(v) for v in stored if v < 0][:10]}")
    bad = [int(v) for v in stored if int(v) not in values and int(v) not in unlabelled]
    if bad:
        raise ValueError(
            f"{source}: label values {bad[:10]} are neither a class (label_values {values} for "
            f"{num_classes} classes) nor unlabelled (unlabelled_value={unlabelled_value}, "
            f"ignore_index={ignore_index}); napari/ilastik scribbles (0 = unlabelled, 1..K) need "
            f"label_values={list(range(1, num_classes + 1))} unlabelled_value=0")
    fill = IGNORE_INDEX if ignore_index is None else int(ignore_index)
    if ignore_index is None and any(int(v) in unlabelled for v in stored):
        raise ValueError(f"{source}: unlabelled voxels (value {unlabelled_value}) need data.ignore_index")
    lut_size = max(int(stored.max()) + 1, 1) if stored.size else 1
    lut = np.full(lut_size, fill, dtype=np.uint8)
    for i, v in enumerate(values):
        if v < lut_size:
            lut[v] = i
    return lut[arr]
