"""Readers of beamline projection files, lazy by detector rows.

A :class:`ProjectionScan` holds the projections ``(angles, rows, columns)`` (tomopy order) as a
lazily sliced array, with what the file says about flats, darks, angles (radians), pixel size
(nm) and energy (eV). :func:`open_scan` picks the reader by suffix:

* **Data Exchange HDF5** (APS / tomopy / dxchange): ``exchange/data``, ``exchange/data_white``
  (flats), ``exchange/data_dark`` (darks) and ``exchange/theta`` (degrees, unless its ``units``
  attribute says radians); every key can be overridden.
* **Zeiss/Xradia TXRM / XRM** (OLE2 compound files, read with ``olefile``): images
  ``ImageData<k>/Image<n>``, angles ``ImageInfo/Angles`` (degrees), ``ImageInfo/PixelSize`` (um),
  ``ImageInfo/Energy`` (eV), an embedded reference (flat) ``ReferenceData/Image`` when present.
* **TIFF stacks, folders of TIFFs, .npy**: the projections only (memory-mapped when the file
  allows); flats, darks and angles come from separate files.

Rows are read on demand (``scan.rows(start, stop)``), so a 2k^3 scan is never loaded whole;
flats and darks are averaged per row block. Every problem raises one error that names the file
and the key.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from src.data.io import ImageReadError, read_image

__all__ = ["HDF5_SUFFIXES", "TXRM_SUFFIXES", "ProjectionScan", "open_scan", "read_angles",
           "read_data_exchange", "read_txrm"]

HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".nxs")
TXRM_SUFFIXES = (".txrm", ".xrm")
DX_KEYS = {"data": "exchange/data", "flat": "exchange/data_white", "dark": "exchange/data_dark",
           "theta": "exchange/theta"}


@dataclass
class ProjectionScan:
    """Projections ``(angles, rows, columns)`` with their flats, darks and geometry.

    ``data``, ``flat`` and ``dark`` are array-likes sliced on demand (h5py datasets, memory maps,
    arrays); ``flat``/``dark`` are ``(n, rows, columns)`` or ``None``. ``theta`` is in radians
    (``None`` when the file has no angles). ``source`` names where each part came from.
    """

    path: Path
    data: Any
    flat: Any = None
    dark: Any = None
    theta: np.ndarray | None = None
    pixel_size_nm: float | None = None
    energy_ev: float | None = None
    source: dict[str, str] = field(default_factory=dict)
    _handles: list[Any] = field(default_factory=list, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(angles, rows, columns)``."""
        return tuple(int(v) for v in self.data.shape)  # type: ignore[return-value]

    def rows(self, start: int, stop: int) -> np.ndarray:
        """Raw projections of detector rows ``[start, stop)`` as float32 ``(angles, n, cols)``."""
        return np.asarray(self.data[:, start:stop], dtype=np.float32)

    @staticmethod
    def _mean_rows(frames: Any, start: int, stop: int) -> np.ndarray | None:
        if frames is None:
            return None
        return np.asarray(frames[:, start:stop], dtype=np.float32).mean(0)

    def flat_rows(self, start: int, stop: int) -> np.ndarray | None:
        """Mean flat of rows ``[start, stop)`` ``(n, cols)`` (None without flats)."""
        return self._mean_rows(self.flat, start, stop)

    def dark_rows(self, start: int, stop: int) -> np.ndarray | None:
        """Mean dark of rows ``[start, stop)`` ``(n, cols)`` (None without darks)."""
        return self._mean_rows(self.dark, start, stop)

    def close(self) -> None:
        """Close the files held open for lazy reading."""
        for handle in self._handles:
            handle.close()
        self._handles.clear()

    def __enter__(self) -> ProjectionScan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_frames(array: Any, path: Path, key: str, what: str, shape: tuple[int, int, int]) -> Any:
    """Flats/darks as ``(n, rows, cols)``; a single 2D frame gets a leading axis."""
    if array is None:
        return None
    if array.ndim == 2:
        array = np.asarray(array)[None]
    if array.ndim != 3 or tuple(array.shape[1:]) != shape[1:]:
        raise ValueError(f"{path}: {what} {key!r} has shape {tuple(array.shape)}, the projections "
                         f"are {shape} (angles, rows, columns): each {what} frame must be "
                         f"{shape[1:]}")
    return array


def check_theta(theta: np.ndarray, shape: tuple[int, ...], where: str) -> np.ndarray:
    """``theta`` as float64 radians, checked against the projections.

    Refused unless it has one finite angle per projection (axis 0 of ``shape``), with a hint when
    another axis matches (a transposed stack).
    """
    theta = np.asarray(theta, dtype=np.float64).ravel()
    if theta.size != shape[0]:
        hint = ""
        if theta.size in shape[1:]:
            axis = 1 + tuple(shape[1:]).index(theta.size)
            hint = (f"; axis {axis} has {theta.size} entries: the stack looks transposed, "
                    f"tomopy order is (angles, rows, cols), e.g. np.moveaxis(tomo, {axis}, 0)")
        raise ValueError(f"{where}: theta has {theta.size} angles for {shape[0]} projections "
                         f"(axis 0 of the data {tuple(shape)}){hint}")
    if not np.all(np.isfinite(theta)):
        raise ValueError(f"{where}: angles contain NaN/inf")
    return theta


def read_angles(spec: Any, unit: str = "rad") -> np.ndarray:
    """Angles from a file (``.npy`` or text) or a list, converted to radians from ``unit``."""
    if unit not in ("rad", "deg"):
        raise ValueError(f"theta_unit must be 'rad' or 'deg', got {unit!r}")
    if isinstance(spec, str | Path):
        path = Path(spec)
        if not path.is_file():
            raise FileNotFoundError(f"theta file {path} does not exist")
        theta = np.load(path) if path.suffix == ".npy" else np.loadtxt(path, ndmin=1)
    else:
        theta = np.asarray(spec)
    theta = np.asarray(theta, dtype=np.float64).ravel()
    if unit == "rad" and theta.size > 1 and np.ptp(theta[np.isfinite(theta)]) > 2 * np.pi + 1e-6:
        raise ValueError(f"theta{f' {spec}' if isinstance(spec, str | Path) else ''}: the angles span "
                         f"{np.ptp(theta):.4g} rad, more than a full turn (2π): they look like degrees; "
                         "pass theta_unit=deg")
    return np.deg2rad(theta) if unit == "deg" else theta


# ------------------------------------------------------------------------------- Data Exchange
def read_data_exchange(
    path: str | Path, data: str | None = None, flat: str | None = None,
    dark: str | None = None, theta: str | None = None,
) -> ProjectionScan:
    """Open a Data Exchange HDF5 file lazily (keys default to :data:`DX_KEYS`).

    A key given explicitly must exist; the default flat/dark/theta keys are optional (``None``
    in the scan when absent).
    """
    import h5py

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    try:
        fh = h5py.File(path, "r")
    except OSError as err:
        raise ImageReadError(f"{path}: not a readable HDF5 file ({err})") from err
    try:
        keys = {"data": data or DX_KEYS["data"], "flat": flat or DX_KEYS["flat"],
                "dark": dark or DX_KEYS["dark"], "theta": theta or DX_KEYS["theta"]}
        explicit = {"data": True, "flat": flat is not None, "dark": dark is not None,
                    "theta": theta is not None}
        found: dict[str, Any] = {}
        for part, key in keys.items():
            if key in fh and isinstance(fh[key], h5py.Dataset):
                found[part] = fh[key]
            elif explicit[part]:
                datasets = _dataset_names(fh)
                raise KeyError(f"{path}: no dataset {key!r} ({part}); the file has "
                               f"{datasets[:12]}")
        arr = found["data"]
        if arr.ndim != 3:
            raise ValueError(f"{path}: {keys['data']!r} has shape {arr.shape}; projections must "
                             "be (angles, rows, columns)")
        shape = tuple(int(v) for v in arr.shape)
        scan = ProjectionScan(path, arr, source={"data": f"{path}:{keys['data']}"},
                              _handles=[fh])
        for part in ("flat", "dark"):
            if part in found:
                setattr(scan, part, _as_frames(found[part], path, keys[part], part, shape))
                scan.source[part] = f"{path}:{keys[part]}"
        if "theta" in found:
            values = np.asarray(found["theta"][()], dtype=np.float64).ravel()
            units = found["theta"].attrs.get("units", b"deg")
            units = units.decode() if isinstance(units, bytes) else str(units)
            rad = units.lower().startswith("rad")
            scan.theta = check_theta(values if rad else np.deg2rad(values), shape,
                                     f"{path}:{keys['theta']}")
            scan.source["theta"] = f"{path}:{keys['theta']} ({'rad' if rad else 'deg'})"
        return scan
    except BaseException:
        fh.close()
        raise


# ------------------------------------------------------------------------------- Xradia TXRM
_XRM_DTYPES = {5: np.uint16, 10: np.float32}


def _ole_value(ole: Any, name: str, fmt: str, path: Path, count: int | None = None) -> Any:
    if not ole.exists(name):
        return None
    raw = ole.openstream(name).read()
    size = struct.calcsize(fmt)
    n = len(raw) // size if count is None else count
    values = struct.unpack(f"<{n}{fmt}", raw[: n * size])
    return values if count != 1 else values[0]


class _TxrmImages:
    """Lazy ``(angles, rows, cols)`` view of the images of an open OLE file."""

    def __init__(self, ole: Any, path: Path, names: list[str], shape: tuple[int, int],
                 dtype: Any) -> None:
        self.ole, self.path, self.names, self.dtype = ole, path, names, np.dtype(dtype)
        self.shape = (len(names), *shape)
        self.ndim = 3

    def _image(self, name: str) -> np.ndarray:
        raw = self.ole.openstream(name).read()
        n = self.shape[1] * self.shape[2]
        if len(raw) < n * self.dtype.itemsize:
            raise ImageReadError(f"{self.path}: stream {name!r} holds {len(raw)} bytes, "
                                 f"{n * self.dtype.itemsize} expected for {self.shape[1:]}")
        return np.frombuffer(raw[: n * self.dtype.itemsize], dtype=self.dtype).reshape(self.shape[1:])

    def __getitem__(self, key: Any) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        first, rest = key[0], key[1:]
        idx = range(self.shape[0])[first] if isinstance(first, slice) else [int(first)]
        out = np.stack([self._image(self.names[i])[rest] for i in idx])
        return out if isinstance(first, slice) else out[0]


def read_txrm(path: str | Path) -> ProjectionScan:
    """Open a Zeiss/Xradia ``.txrm`` (tomography series) or ``.xrm`` (one frame) lazily.

    Angles (``ImageInfo/Angles``, degrees) become radians, ``ImageInfo/PixelSize`` (um) nm and
    ``ImageInfo/Energy`` eV. An embedded reference image (``ReferenceData/Image``) is the flat.
    """
    try:
        import olefile
    except ImportError as err:
        raise ImportError("reading TXRM/XRM needs olefile: pip install olefile") from err
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if not olefile.isOleFile(str(path)):
        raise ImageReadError(f"{path}: not an OLE2 compound file (TXRM/XRM)")
    ole = olefile.OleFileIO(str(path))
    try:
        width = _ole_value(ole, "ImageInfo/ImageWidth", "I", path, 1)
        height = _ole_value(ole, "ImageInfo/ImageHeight", "I", path, 1)
        names = sorted(("/".join(e) for e in ole.listdir()
                        if len(e) == 2 and e[0].startswith("ImageData") and e[1].startswith("Image")),
                       key=lambda s: int(s.rsplit("Image", 1)[1]))
        if not names or width is None or height is None:
            raise ImageReadError(f"{path}: no images (streams 'ImageData*/Image*' with "
                                 "'ImageInfo/ImageWidth' and 'ImageHeight'): not a TXRM/XRM "
                                 "with projections")
        code = _ole_value(ole, "ImageInfo/DataType", "I", path, 1)
        dtype = _XRM_DTYPES.get(int(code) if code is not None else 5)
        if dtype is None:
            raise ImageReadError(f"{path}: 'ImageInfo/DataType' {code} is not supported "
                                 f"(known: {sorted(_XRM_DTYPES)})")
        data = _TxrmImages(ole, path, names, (int(height), int(width)), dtype)
        scan = ProjectionScan(path, data, source={"data": f"{path}:ImageData*/Image*"},
                              _handles=[ole])
        angles = _ole_value(ole, "ImageInfo/Angles", "f", path)
        if angles is not None and len(angles) >= len(names):
            scan.theta = np.deg2rad(np.asarray(angles[: len(names)], dtype=np.float64))
            scan.source["theta"] = f"{path}:ImageInfo/Angles (deg)"
        pixel = _ole_value(ole, "ImageInfo/PixelSize", "f", path)
        if pixel:
            scan.pixel_size_nm = float(pixel[0]) * 1e3
        energy = _ole_value(ole, "ImageInfo/Energy", "f", path)
        if energy:
            scan.energy_ev = float(energy[0])
        if ole.exists("ReferenceData/Image"):
            ref_code = _ole_value(ole, "ReferenceData/DataType", "I", path, 1)
            ref_dtype = np.dtype(_XRM_DTYPES.get(int(ref_code) if ref_code else 10, np.float32))
            raw = ole.openstream("ReferenceData/Image").read()
            n = int(height) * int(width)
            if len(raw) >= n * ref_dtype.itemsize:
                scan.flat = np.frombuffer(raw[: n * ref_dtype.itemsize],
                                          dtype=ref_dtype).reshape(1, int(height), int(width))
                scan.source["flat"] = f"{path}:ReferenceData/Image"
        return scan
    except BaseException:
        ole.close()
        raise


# ------------------------------------------------------------------------------- any file
def _read_plain(path: Path) -> ProjectionScan:
    array = read_image(path, mmap=True)
    if array.ndim == 2:
        array = np.asarray(array)[:, None]
    return ProjectionScan(path, array, source={"data": str(path)})


def _frames_from(spec: str | Path, key: str | None, what: str, scan: ProjectionScan) -> Any:
    path = Path(spec)
    if path.suffix.lower() in HDF5_SUFFIXES:
        other = read_data_exchange(path, data=key or DX_KEYS[what])
        scan._handles.extend(other._handles)
        frames, name = other.data, f"{path}:{key or DX_KEYS[what]}"
    elif path.suffix.lower() in TXRM_SUFFIXES:
        other = read_txrm(path)
        frames, name = np.asarray(other.data[:]), str(path)
        other.close()
    else:
        frames, name = read_image(path, mmap=True), str(path)
    return _as_frames(frames, path, name, what, scan.shape), name


def open_scan(
    path: str | Path,
    dataset: str | None = None,
    flat: str | Path | None = None,
    dark: str | Path | None = None,
    theta: Any = None,
    theta_unit: str = "rad",
    flat_dataset: str | None = None,
    dark_dataset: str | None = None,
    theta_dataset: str | None = None,
) -> ProjectionScan:
    """Open projections with everything the file holds; ``flat``/``dark``/``theta`` override.

    ``flat``/``dark`` are other files (HDF5: their ``flat_dataset``/``dark_dataset``, default the
    Data Exchange keys; TIFF/npy; TXRM/XRM); ``theta`` is a file or list in ``theta_unit``, or
    ``"even"`` (evenly spaced over [0, pi)). Refuses flats/darks of another shape and angles that
    do not match the projection count.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    suffix = path.suffix.lower()
    if suffix in HDF5_SUFFIXES:
        same_flat = flat is not None and Path(flat) == path
        same_dark = dark is not None and Path(dark) == path
        scan = read_data_exchange(
            path, data=dataset, theta=theta_dataset,
            flat=flat_dataset if same_flat and flat_dataset else None,
            dark=dark_dataset if same_dark and dark_dataset else None)
        flat = None if same_flat else flat
        dark = None if same_dark else dark
    elif suffix in TXRM_SUFFIXES:
        scan = read_txrm(path)
    else:
        scan = _read_plain(path)
    try:
        if flat is not None:
            scan.flat, scan.source["flat"] = _frames_from(flat, flat_dataset, "flat", scan)
        if dark is not None:
            scan.dark, scan.source["dark"] = _frames_from(dark, dark_dataset, "dark", scan)
        if isinstance(theta, str) and theta == "even":
            scan.theta = np.linspace(0.0, math.pi, scan.shape[0], endpoint=False)
            scan.source["theta"] = "even over [0, pi)"
        elif theta is not None:
            where = f"theta={theta}" if isinstance(theta, str | Path) else "theta=[...]"
            scan.theta = check_theta(read_angles(theta, theta_unit), scan.shape, where)
            scan.source["theta"] = str(theta) if isinstance(theta, str | Path) else "list"
    except BaseException:
        scan.close()
        raise
    return scan


def _dataset_names(fh: Any) -> list[str]:
    """The paths of every dataset in an open HDF5 file (for the error naming what is there)."""
    import h5py

    names: list[str] = []
    fh.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
    return names
