"""Projection stacks and their angles: tomopy-ordered ``(angles, rows, columns)`` from a TIFF
stack, a folder of TIFFs, ``.npy`` or an HDF5 dataset (Data Exchange ``exchange/data`` by
default), and angle lists (radians or degrees)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from src.data.io import HDF5_SUFFIXES, read_image

__all__ = ["read_stack", "read_theta"]


def read_stack(path: str | Path, dataset: str | None = None) -> np.ndarray:
    """Read a projection (or flat/dark) stack into memory.

    Args:
        path: a TIFF, folder of TIFFs or ``.npy`` (:func:`src.data.io.read_image`), or an HDF5
            file (``.h5``, ``.hdf5``, ``.hdf``, ``.nxs``).
        dataset: the HDF5 dataset key; default ``exchange/data``.

    Returns:
        The array as float32, e.g. ``(angles, rows, columns)``.
    """
    path = Path(path)
    if path.suffix.lower() in HDF5_SUFFIXES:
        try:
            import h5py
        except ImportError as err:
            raise ImportError(f"{path}: reading HDF5 needs h5py (pip install h5py)") from err
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file")
        key = dataset or "exchange/data"
        with h5py.File(path, "r") as fh:
            if key not in fh:
                raise KeyError(f"{path}: no dataset {key!r}; set dataset=... (has {list(fh)})")
            return np.asarray(fh[key], dtype=np.float32)
    return np.asarray(read_image(path, mmap=False), dtype=np.float32)


def read_theta(spec: str | Path | Sequence[float] | None, n_angles: int, unit: str = "rad") -> np.ndarray:
    """The projection angles.

    Args:
        spec: a file (``.npy`` or text, one angle a line), a list of angles, or None: ``n_angles``
            evenly spaced over ``[0, pi)``.
        n_angles: the number of projections (used when ``spec`` is None).
        unit: ``"rad"`` or ``"deg"``, the unit of ``spec``'s values.

    Returns:
        ``(n_angles,)`` float64 angles in radians.
    """
    if unit not in ("rad", "deg"):
        raise ValueError(f"theta_unit must be 'rad' or 'deg', got {unit!r}")
    if spec is None:
        return np.linspace(0.0, math.pi, n_angles, endpoint=False)
    if isinstance(spec, str | Path):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"theta file {path} does not exist")
        theta = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=1)
    else:
        theta = np.asarray(spec)
    theta = np.asarray(theta, dtype=np.float64).ravel()
    return np.deg2rad(theta) if unit == "deg" else theta
