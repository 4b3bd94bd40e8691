"""Volumes too large for memory: lazy readers and chunk-by-chunk writers (no torch).

Readers (:func:`open_volume`) take a TIFF (multipage, through tifffile's Zarr store), a
folder of 2D TIFF slices, HDF5 (``file.h5`` or ``file.h5:dataset``), Zarr (``dir.zarr`` or
``dir.zarr:array``), ``.npy`` or an in-memory array, and read only the region asked for, so
memory stays bounded by the region. Writers (:func:`create_output`, :func:`open_output`) hold a
label volume (uint8, (z, y, x)) and optional class probabilities (float32, (C, z, y, x)) as a
Zarr group or as memory-mapped uncompressed TIFFs that are filled region by region; several
processes may write disjoint regions of one output at once.
"""

from __future__ import annotations

import os
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from src.data.io import HDF5_SUFFIXES, TIFF_SUFFIXES, ImageReadError, natural_sort_key
from src.data.transforms import DEFAULT_NORMALIZE, percentile_range

ZARR_SUFFIXES = (".zarr", ".zarr/")
Region = tuple[slice, ...]


def split_key(spec: str | os.PathLike[str]) -> tuple[Path, str | None]:
    """``file.h5:group/data`` → (``file.h5``, ``group/data``); other paths → (path, None)."""
    text = str(spec)
    for suffix in (*HDF5_SUFFIXES, ".zarr"):
        marker = suffix + ":"
        if marker in text:
            head, key = text.split(marker, 1)
            return Path(head + suffix), key.strip("/") or None
    return Path(text), None


class VolumeSource:
    """A (z, y, x) or (y, x) grey volume read region by region.

    ``read(region)`` returns the numpy array of ``region`` (a tuple of slices with steps of 1
    or more); nothing else is held in memory. ``shape``, ``dtype`` and ``name`` describe it.
    """

    def __init__(self, name: str, shape: tuple[int, ...], dtype: np.dtype, reader: Any, closer: Any = None) -> None:
        self.name, self.shape, self.dtype = name, tuple(int(s) for s in shape), np.dtype(dtype)
        self._reader, self._closer = reader, closer
        if len(self.shape) not in (2, 3):
            raise ImageReadError(f"{name}: expected a 2D (y, x) or 3D (z, y, x) volume, got shape {self.shape}")
        if 0 in self.shape:
            raise ImageReadError(f"{name}: volume is empty (shape {self.shape})")

    @property
    def ndim(self) -> int:
        """Number of axes: 3 for (z, y, x), 2 for (y, x)."""
        return len(self.shape)

    def read(self, region: Region) -> np.ndarray:
        """The numpy array of ``region`` (a tuple of slices)."""
        return np.asarray(self._reader(region))

    def close(self) -> None:
        """Close the underlying file, if any; later calls do nothing."""
        if self._closer is not None:
            self._closer()
            self._closer = None

    def __enter__(self) -> VolumeSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _squeeze_shape(shape: tuple[int, ...]) -> tuple[int, tuple[int, ...]]:
    """(number of leading singleton axes to drop, remaining shape) down to at least 2 axes."""
    drop = 0
    while len(shape) - drop > 2 and shape[drop] == 1:
        drop += 1
    return drop, tuple(shape[drop:])


def _array_source(name: str, array: Any, closer: Any = None) -> VolumeSource:
    """Wrap anything sliceable with ``shape``/``dtype`` (zarr, h5py, numpy), squeezing (1, ...) axes."""
    drop, shape = _squeeze_shape(tuple(array.shape))
    lead = (0,) * drop
    return VolumeSource(name, shape, array.dtype, lambda region: array[lead + tuple(region)], closer)


def _open_tiff(path: Path) -> VolumeSource:
    import zarr

    from src.data.io import _inspect_tiff

    _inspect_tiff(path)  # the readers' one check: a truncated or corrupt file is named here
    try:
        store = tifffile.imread(path, aszarr=True)
        array = zarr.open(store, mode="r")
    except (tifffile.TiffFileError, ValueError, OSError, KeyError, struct.error) as exc:
        raise ImageReadError(f"{path}: unreadable TIFF ({type(exc).__name__}: {exc})") from exc
    if not hasattr(array, "shape"):  # pyramid: a group of levels
        array = array["0"]
    return _array_source(str(path), array, store.close)


def _open_tiff_folder(folder: Path) -> VolumeSource:
    import zarr

    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in TIFF_SUFFIXES),
                   key=natural_sort_key)
    if not files:
        raise ImageReadError(f"{folder}: folder contains no TIFF files ({', '.join(TIFF_SUFFIXES)})")
    try:
        store = tifffile.TiffSequence(files, pattern=None).aszarr()
        array = zarr.open(store, mode="r")
    except (tifffile.TiffFileError, ValueError, OSError, struct.error) as exc:
        raise ImageReadError(f"{folder}: TIFF slices cannot be stacked ({type(exc).__name__}: {exc}); "
                             "every slice must be 2D with the same shape and dtype") from exc
    return _array_source(str(folder), array, store.close)


def _open_hdf5(path: Path, key: str | None) -> VolumeSource:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as exc:
        raise ImageReadError(f"{path}: unreadable HDF5 ({exc})") from exc
    if key is None:
        found: list[str] = []
        handle.visititems(lambda n, obj: found.append(n) if isinstance(obj, h5py.Dataset) and obj.ndim >= 2 else None)
        if len(found) != 1:
            handle.close()
            raise ImageReadError(f"{path}: {'no' if not found else len(found)} image datasets ({', '.join(found)}); "
                                 f"name one as {path}:<dataset>")
        key = found[0]
    if key not in handle or not isinstance(handle[key], h5py.Dataset):
        names: list[str] = []
        handle.visititems(lambda n, obj: names.append(n) if isinstance(obj, h5py.Dataset) else None)
        handle.close()
        raise ImageReadError(f"{path}: no dataset '{key}'; datasets: {', '.join(names) or 'none'}")
    return _array_source(f"{path}:{key}", handle[key], handle.close)


def _open_zarr(path: Path, key: str | None) -> VolumeSource:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:  # zarr raises several types for missing or broken stores
        raise ImageReadError(f"{path}: unreadable Zarr store ({type(exc).__name__}: {exc})") from exc
    if key is not None:
        try:
            node = node[key]
        except KeyError as exc:
            raise ImageReadError(f"{path}: no array '{key}' in the Zarr group") from exc
    if not hasattr(node, "shape"):
        arrays = [k for k, v in node.arrays()]
        if len(arrays) != 1:
            raise ImageReadError(f"{path}: Zarr group holds arrays {arrays}; name one as {path}:<array>")
        node = node[arrays[0]]
    return _array_source(f"{path}" + (f":{key}" if key else ""), node)


def _open_npy(path: Path) -> VolumeSource:
    try:
        header = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ImageReadError(f"{path}: unreadable or truncated .npy ({type(exc).__name__}: {exc})") from exc
    drop, shape = _squeeze_shape(header.shape)
    del header

    def read(region: Region) -> np.ndarray:  # map, copy, unmap: resident pages never pile up
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
        return np.array(mapped[(0,) * drop + tuple(region)])

    return VolumeSource(str(path), shape, np.load(path, mmap_mode="r").dtype, read)


def open_volume(spec: str | os.PathLike[str] | np.ndarray, key: str | None = None) -> VolumeSource:
    """A lazy :class:`VolumeSource` for a file, folder, ``path:key`` or an in-memory array.

    Raises :class:`ImageReadError` naming the file and what was expected.
    """
    if isinstance(spec, np.ndarray):
        return _array_source("<array>", spec)
    path, parsed_key = split_key(spec)
    key = key or parsed_key
    if not path.exists():
        raise ImageReadError(f"{path}: no such file or directory")
    suffix = path.suffix.lower()
    if suffix == ".zarr" or (path.is_dir() and ((path / "zarr.json").exists() or (path / ".zarray").exists()
                                                 or (path / ".zgroup").exists())):
        return _check_dtype(_open_zarr(path, key))
    if path.is_dir():
        return _check_dtype(_open_tiff_folder(path))
    if suffix in TIFF_SUFFIXES:
        return _check_dtype(_open_tiff(path))
    if suffix in HDF5_SUFFIXES:
        return _check_dtype(_open_hdf5(path, key))
    if suffix == ".npy":
        return _check_dtype(_open_npy(path))
    raise ImageReadError(f"{path}: unsupported volume '{path.suffix}'; supported: TIFF ({', '.join(TIFF_SUFFIXES)}), "
                         f"a folder of TIFF slices, HDF5 ({', '.join(HDF5_SUFFIXES)}[:dataset]), Zarr (.zarr[:array]), .npy")


def _check_dtype(source: VolumeSource) -> VolumeSource:
    """Grey volumes are real numbers: complex (or non-numeric) data is refused, naming the file."""
    dtype = np.dtype(source.dtype)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == np.dtype(bool)):
        source.close()
        raise ImageReadError(f"{source.name}: grey values must be real numbers, got dtype {dtype}"
                             + (" (complex: take np.abs or the real part first)"
                                if np.issubdtype(dtype, np.complexfloating) else ""))
    return source


def sample_range(source: VolumeSource, lower: float = DEFAULT_NORMALIZE["lower"],
                 upper: float = DEFAULT_NORMALIZE["upper"],
                 max_samples: int = 2_000_000) -> tuple[float, float]:
    """Grey values at the ``lower``/``upper`` percentiles of a regular sample of the volume.

    Reads at most ~64 evenly spaced slices, each strided in y and x, so about ``max_samples``
    voxels; the same sample whether the volume is on disk or in memory.
    """
    shape = source.shape if source.ndim == 3 else (1, *source.shape)
    n_slices = min(shape[0], 64)
    zs = np.unique(np.linspace(0, shape[0] - 1, n_slices).round().astype(int))
    step = max(1, int(np.ceil(np.sqrt(shape[1] * shape[2] * len(zs) / max_samples))))
    plane = (slice(None, None, step), slice(None, None, step))
    parts = [source.read((slice(z, z + 1), *plane) if source.ndim == 3 else plane) for z in zs]
    sample = np.concatenate([p.reshape(-1) for p in parts])
    finite = np.isfinite(sample)
    if not finite.all():
        raise ValueError(f"{source.name}: the volume holds {int((~finite).sum())} NaN or infinite grey "
                         f"value(s) in the sampled slices; replace them (e.g. numpy.nan_to_num) first")
    if sample.size and sample.min() == sample.max():
        raise ValueError(f"{source.name}: the grey values are constant ({sample.flat[0]!r}) in the sampled "
                         "slices: there is nothing to segment (a blank or wrongly exported volume?)")
    return percentile_range(sample, lower, upper)


# ------------------------------------------------------------------------------------ outputs

class VolumeOutput:
    """Labels (uint8, ``shape``) and optional probabilities (float32, (C, *shape)) written by region."""

    labels: Any
    probabilities: Any

    def write(self, region: Region, labels: np.ndarray, probabilities: np.ndarray | None) -> None:
        """Write ``region``'s ``labels`` and, when kept, ``probabilities`` (C, ...); then flush."""
        self.labels[region] = labels
        if probabilities is not None and self.probabilities is not None:
            self.probabilities[(slice(None), *region)] = probabilities
        self.flush()

    def flush(self) -> None:
        """Make written regions durable (memory-mapped files)."""

    def finalize(self) -> None:
        """Called once, when every region has been written."""


class MemoryOutput(VolumeOutput):
    """Plain numpy arrays (the in-memory path)."""

    def __init__(self, shape: tuple[int, ...], n_classes: int, probabilities: bool) -> None:
        self.labels = np.zeros(shape, np.uint8)
        self.probabilities = np.zeros((n_classes, *shape), np.float32) if probabilities else None


class ZarrOutput(VolumeOutput):
    """A Zarr group with arrays ``labels`` and (optionally) ``probabilities``.

    Chunked like the prediction so that each process writes whole chunks only.
    """

    def __init__(self, path: Path, create: dict | None = None) -> None:
        import zarr

        self.path = path
        if create is not None:
            group = zarr.open_group(str(path), mode="w")
            shape, chunks = tuple(create["shape"]), tuple(create["chunks"])
            group.create_array("labels", shape=shape, chunks=chunks, dtype="uint8", fill_value=0)
            if create["n_classes"]:
                group.create_array("probabilities", shape=(create["n_classes"], *shape),
                                   chunks=(create["n_classes"], *chunks), dtype="float32", fill_value=0.0)
            group.attrs.update(create.get("attrs", {}))
        group = zarr.open_group(str(path), mode="r+")
        self.group = group
        self.labels = group["labels"]
        self.probabilities = group["probabilities"] if "probabilities" in group else None

    def finalize(self) -> None:
        """Mark the group complete and move a staged replacement to its final path."""
        self.group.attrs["complete"] = True
        final = self.group.attrs.get("final_path")
        if final and Path(final) != self.path:  # a replacement staged beside the old output
            final = Path(final)
            trash = final.with_name(f".{final.name}.replaced")
            shutil.rmtree(trash, ignore_errors=True)
            if final.exists():
                os.replace(final, trash)  # the old output stays whole until the new one is
            os.replace(self.path, final)
            shutil.rmtree(trash, ignore_errors=True)
            self.path = final


def zarr_partial(path: Path) -> Path:
    """Where a Zarr output that replaces a finished one is filled (moved to ``path`` at the end)."""
    return path.with_name(f".{path.name}.partial")


def _tiff_data(path: Path) -> tuple[int, tuple[int, ...], np.dtype]:
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        if series.dataoffset is None:
            raise ImageReadError(f"{path}: partial output TIFF is not contiguous; delete it and start again")
        return int(series.dataoffset), tuple(series.shape), np.dtype(series.dtype)


class _MappedTiff:
    """Region assignment into a contiguous TIFF, mapping the file only while writing."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset, self.shape, self.dtype = _tiff_data(path)

    def __setitem__(self, region: Region, value: np.ndarray) -> None:
        mapped = np.memmap(self.path, self.dtype, "r+", self.offset, self.shape)
        mapped[region] = value
        mapped.flush()
        del mapped


def tiff_partial(path: Path) -> Path:
    """Where a TIFF output is filled before it is complete (renamed to ``path`` at the end)."""
    return path.with_name(f".{path.name}.partial{path.suffix}")


def probabilities_path(path: Path) -> Path:
    """``seg.tif`` → ``seg_probs.tif``."""
    return path.with_name(f"{path.stem}_probs{path.suffix}")


class TiffOutput(VolumeOutput):
    """Uncompressed (Big)TIFFs ``path`` (labels) and ``<stem>_probs.tif`` (C, z, y, x).

    Filled through memory maps under hidden ``.partial`` names and renamed when complete.
    """

    def __init__(self, path: Path, create: dict | None = None) -> None:
        self.path = path
        self.files = [(tiff_partial(path), path)]
        n_classes = create["n_classes"] if create is not None else int(tiff_partial(probabilities_path(path)).exists())
        if n_classes:
            self.files.append((tiff_partial(probabilities_path(path)), probabilities_path(path)))
        if create is not None:
            shape = tuple(create["shape"])
            specs = [(shape, np.uint8), ((n_classes, *shape), np.float32)][: len(self.files)]
            for (partial, _), (shp, dtype) in zip(self.files, specs, strict=True):
                nbytes = int(np.prod(shp)) * np.dtype(dtype).itemsize
                tifffile.memmap(partial, shape=shp, dtype=dtype, photometric="minisblack",
                                bigtiff=nbytes > 2**31 - 2**25)  # creates the file, maps nothing we keep
        self.labels = _MappedTiff(self.files[0][0])
        self.probabilities = _MappedTiff(self.files[1][0]) if len(self.files) > 1 else None

    def finalize(self) -> None:
        """Rename the hidden partial TIFFs to their final names."""
        for partial, final in self.files:
            os.replace(partial, final)


def output_kind(path: str | os.PathLike[str]) -> str:
    """``zarr`` or ``tiff`` from the output path's suffix; ValueError otherwise."""
    suffix = Path(path).suffix.lower()
    if suffix == ".zarr":
        return "zarr"
    if suffix in TIFF_SUFFIXES:
        return "tiff"
    raise ValueError(f"output {path}: expected a .zarr store or a .tif/.tiff file, got '{suffix or 'no suffix'}'")


def create_output(path: Path, shape: tuple[int, ...], chunks: tuple[int, ...], n_classes: int,
                  attrs: dict | None = None) -> VolumeOutput:
    """A new output at ``path`` (``n_classes`` 0: labels only).

    A finished output already at ``path`` is replaced only when the new one is complete: TIFFs
    fill hidden partial files, a Zarr store is staged at :func:`zarr_partial` and moved in place
    by ``finalize``.
    """
    spec = {"shape": shape, "chunks": chunks, "n_classes": n_classes, "attrs": attrs or {}}
    if output_kind(path) == "tiff":
        return TiffOutput(path, spec)
    if path.exists():
        spec["attrs"] = {**spec["attrs"], "final_path": str(path)}
        return ZarrOutput(zarr_partial(path), spec)
    return ZarrOutput(path, spec)


def open_output(path: Path) -> VolumeOutput:
    """The unfinished output at ``path`` (to resume it)."""
    if output_kind(path) == "tiff":
        return TiffOutput(path)
    return ZarrOutput(zarr_partial(path) if zarr_partial(path).exists() else path)


def _remove(targets: list[Path]) -> None:
    for target in targets:
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)


def remove_partial_output(path: Path) -> None:
    """Delete what an unfinished run left (partial files or staged store), not a finished output."""
    _remove([zarr_partial(path)] if output_kind(path) == "zarr"
            else [tiff_partial(path), tiff_partial(probabilities_path(path))])


def remove_output(path: Path) -> None:
    """Delete an output (store or files, finished or partial)."""
    remove_partial_output(path)
    _remove([path] if output_kind(path) == "zarr" else [path, probabilities_path(path)])


def output_exists(path: Path) -> bool:
    """Whether an output (finished, or a partial TIFF one) exists at ``path``."""
    return path.exists() or (output_kind(path) == "tiff" and tiff_partial(path).exists())
