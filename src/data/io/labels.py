"""The one label checker: integral values inside the phases ``0 .. n - 1``."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["check_label_values"]


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
