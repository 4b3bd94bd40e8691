"""Reading and writing grey-value images and volumes (numpy + tifffile only, no torch).

Shapes follow the project convention: 2D images are ``(y, x)``, volumes ``(z, y, x)``.
Supported inputs: ``.tif``/``.tiff`` (single or multipage), folders of 2D TIFF slices and
``.npy`` arrays. Every read error is an :class:`ImageReadError` naming the file.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import struct
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

TIFF_SUFFIXES = (".tif", ".tiff")
#: the endings of HDF5 files (NeXus and Data Exchange included)
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs")
IMAGE_SUFFIXES = (*TIFF_SUFFIXES, ".npy")
BIGTIFF_THRESHOLD = 2**31 - 2**25  # bytes; leave headroom for tags below the 4 GB/2 GB limits
_CHUNK_ELEMENTS = 2**24  # elements per slab when scanning large (memory-mapped) arrays


class ImageReadError(ValueError):
    """An image file or folder could not be read; the message names the file and the problem."""


def natural_sort_key(s: str | os.PathLike[str]) -> list[int | str]:
    """Key sorting embedded numbers numerically: ``img2.tif`` before ``img10.tif``."""
    return [int(tok) if tok.isdigit() else tok.lower() for tok in re.split(r"(\d+)", str(s))]


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES


def list_images(spec: str | os.PathLike[str]) -> list[Path]:
    """Resolve a file, a directory (its .tif/.tiff/.npy files) or a glob pattern to paths.

    Results are naturally sorted. Raises FileNotFoundError naming ``spec`` if nothing matches.
    """
    path = Path(spec)
    if path.is_file():
        return [path]
    if path.is_dir():
        found = [p for p in path.iterdir() if _is_image(p)]
    elif glob.has_magic(str(spec)):
        found = [Path(p) for p in glob.glob(str(spec), recursive=True) if Path(p).is_file()]
    else:
        raise FileNotFoundError(f"No such file or directory: '{spec}'")
    if not found:
        raise FileNotFoundError(f"No image files ({', '.join(IMAGE_SUFFIXES)}) match '{spec}'")
    return sorted(found, key=natural_sort_key)


@contextlib.contextmanager
def _tifffile_problems() -> Iterator[list[str]]:
    """Collect tifffile's logged warnings (it logs, rather than raises, on truncated IFD chains)."""
    messages: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            messages.append(record.getMessage())

    handler = _Collect(level=logging.WARNING)
    logger = logging.getLogger("tifffile")
    logger.addHandler(handler)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)


_CORRUPTION_HINTS = ("invalid page offset", "failed to reshape", "corrupted", "truncated")


def _inspect_tiff(path: Path) -> tuple[tuple[int, ...], np.dtype]:
    """Validate the TIFF structure without reading pixel data; return (shape, dtype).

    Checks that the IFD chain is intact and that every page's data lies inside the file, so a
    truncated file fails here with a clear message instead of decoding garbage later.
    """
    size = path.stat().st_size
    try:
        with _tifffile_problems() as problems, tifffile.TiffFile(path) as tif:
            if not tif.series:
                raise ImageReadError(f"{path}: TIFF contains no image series")
            series = tif.series[0]
            shape, dtype, axes = tuple(series.shape), np.dtype(series.dtype), series.axes
            for index, page in enumerate(tif.pages):
                for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
                    if offset + count > size:
                        raise ImageReadError(
                            f"{path}: truncated TIFF (page {index} needs bytes up to "
                            f"{offset + count}, file has {size})"
                        )
    except ImageReadError:
        raise
    except (tifffile.TiffFileError, ValueError, OSError, KeyError, IndexError, struct.error) as exc:
        raise ImageReadError(f"{path}: unreadable TIFF ({type(exc).__name__}: {exc})") from exc
    bad = [m for m in problems if any(h in m for h in _CORRUPTION_HINTS)]
    if bad:
        raise ImageReadError(f"{path}: truncated or corrupted TIFF ({'; '.join(bad)})")
    if "S" in axes:
        raise ImageReadError(
            f"{path}: multi-sample (RGB) TIFF with axes '{axes}' is not supported; "
            "convert it to single-channel grey values"
        )
    return shape, dtype


def _squeeze_leading(array: np.ndarray) -> np.ndarray:
    """Drop singleton leading dimensions while more than two remain: (1, y, x) -> (y, x)."""
    while array.ndim > 2 and array.shape[0] == 1:
        array = array[0]
    return array


def _squeezed_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape :func:`_squeeze_leading` would produce."""
    while len(shape) > 2 and shape[0] == 1:
        shape = shape[1:]
    return shape


def _read_tiff(path: Path, mmap: bool, inspect: bool = True) -> np.ndarray:
    """Read a TIFF, memory-mapping it when uncompressed and ``mmap`` is set.

    ``inspect=False`` skips the structure check when the caller already ran it.
    """
    if inspect:
        _inspect_tiff(path)
    try:
        if mmap:
            try:
                return _squeeze_leading(tifffile.memmap(path, mode="r"))
            except ValueError as exc:
                if "not memory-mappable" not in str(exc):
                    raise
        with _tifffile_problems() as problems:
            data = tifffile.imread(path)
    except (tifffile.TiffFileError, ValueError, OSError, RuntimeError, struct.error) as exc:
        raise ImageReadError(
            f"{path}: failed to read TIFF data ({type(exc).__name__}: {exc})"
        ) from exc
    bad = [m for m in problems if any(h in m for h in _CORRUPTION_HINTS)]
    if bad:
        raise ImageReadError(f"{path}: failed to read TIFF data ({'; '.join(bad)})")
    return _squeeze_leading(np.asarray(data))


def _read_folder(folder: Path) -> np.ndarray:
    """Stack a folder of 2D TIFF slices, naturally sorted, into (z, y, x)."""
    files = sorted(
        (p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES),
        key=natural_sort_key,
    )
    if not files:
        raise ImageReadError(
            f"{folder}: folder contains no TIFF files ({', '.join(TIFF_SUFFIXES)})"
        )
    shapes: list[tuple[int, ...]] = []
    dtypes: list[np.dtype] = []
    for f in files:  # check every header before reading any pixels
        shape, dtype = _inspect_tiff(f)
        shape = _squeezed_shape(shape)
        if len(shape) != 2:
            raise ImageReadError(f"{f}: expected a 2D slice in folder {folder}, got shape {shape}")
        if shapes and shape != shapes[0]:
            raise ImageReadError(
                f"{f}: slice shape {shape} differs from {shapes[0]} of {files[0].name} "
                f"in folder {folder}"
            )
        shapes.append(shape)
        dtypes.append(dtype)
    volume = np.empty((len(files), *shapes[0]), dtype=np.result_type(*dtypes))
    for i, f in enumerate(files):
        volume[i] = _read_tiff(f, mmap=False, inspect=False)
    return volume


def read_image(path: str | os.PathLike[str], mmap: bool = True) -> np.ndarray:
    """Read a 2D image (y, x) or a volume (z, y, x).

    ``path`` is a 2D/multipage TIFF, a folder of 2D TIFF slices (stacked in natural order) or a
    ``.npy`` file. With ``mmap`` uncompressed TIFFs and ``.npy`` files are memory-mapped
    read-only (a ``np.memmap`` is returned); a folder is always stacked in memory. Raises ImageReadError naming the file on failure.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or directory")
    suffix = path.suffix.lower()
    if path.is_dir():
        array = _read_folder(path)
    elif suffix in TIFF_SUFFIXES:
        array = _read_tiff(path, mmap)
    elif suffix == ".npy":
        try:
            array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise ImageReadError(
                f"{path}: unreadable or truncated .npy ({type(exc).__name__}: {exc})"
            ) from exc
    else:
        raise ImageReadError(
            f"{path}: unsupported extension '{path.suffix}'; supported: "
            f"{', '.join(IMAGE_SUFFIXES)} or a folder of TIFF slices"
        )
    if array.ndim not in (2, 3):
        raise ImageReadError(
            f"{path}: expected a 2D (y, x) or 3D (z, y, x) array, got shape {array.shape}"
        )
    return array


def write_tiff(
    path: str | os.PathLike[str],
    array: np.ndarray,
    *,
    compression: str | None = None,
    metadata: dict[str, Any] | None = None,
) -> None:
    """Write ``array`` ((y, x) or (z, y, x)) to a TIFF atomically.

    Writes to a hidden temp file in the target directory and ``os.replace``s it, so readers
    never see a partial file and an existing file survives a failed write. Parent directories
    are created; BigTIFF is used for arrays over ~2 GB. ``metadata`` is stored as JSON.
    """
    array = np.asarray(array)
    with atomic_output(path) as tmp:
        tifffile.imwrite(
            tmp,
            array,
            photometric="minisblack",  # grey values: never guess RGB from a last axis of 3 or 4
            compression=compression,
            metadata=dict(metadata or {}),
            bigtiff=array.nbytes > BIGTIFF_THRESHOLD,
        )


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a hidden temp path beside ``path`` (same suffix); on success it replaces ``path``.

    Readers never see a partial file and an existing file survives a failed write; the temp
    file is removed on any error. Parent directories are created.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike[str], data: Any) -> None:
    """Write ``data`` as indented JSON atomically (NaN/inf kept as JSON5-style tokens)."""
    import json

    write_text(path, json.dumps(data, indent=2, allow_nan=True, ensure_ascii=False) + "\n")


def _slabs(array: np.ndarray) -> Iterator[np.ndarray]:
    """Yield consecutive chunks along axis 0 (bounded memory for memory-mapped volumes)."""
    if array.ndim == 0:
        yield array.reshape(1)
        return
    per_row = max(1, int(np.prod(array.shape[1:])))
    step = max(1, _CHUNK_ELEMENTS // per_row)
    for start in range(0, array.shape[0], step):
        yield np.asarray(array[start : start + step])


def validate_image(array: np.ndarray, path: str | os.PathLike[str]) -> None:
    """Raise ValueError naming ``path`` if ``array`` is empty, has NaN/inf or is constant."""
    if array.size == 0:
        raise ValueError(f"{path}: image is empty (shape {array.shape})")
    check_finite = np.issubdtype(array.dtype, np.inexact)
    lo = hi = None
    for slab in _slabs(array):
        if check_finite and not np.isfinite(slab).all():
            raise ValueError(f"{path}: image contains NaN or infinite values")
        s_lo, s_hi = slab.min(), slab.max()
        lo = s_lo if lo is None else min(lo, s_lo)
        hi = s_hi if hi is None else max(hi, s_hi)
    if lo == hi:
        raise ValueError(f"{path}: image is constant (all values equal {lo!r})")


def to_jsonable(obj: Any) -> Any:
    """Dataclasses, tuples and numpy scalars → plain JSON types (tuples become lists)."""
    import dataclasses

    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(dataclasses.asdict(obj))
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj
