"""Spectral stacks for XANES: reading ``(E, y, x)`` / ``(E, z, y, x)`` with an energy list.

Aligning the energies: :mod:`src.xanes.alignment`.

Stacks: a TIFF (3D: energy, y, x; 4D: energy, z, y, x), a folder of one TIFF per energy
(naturally sorted), a ``.npy`` array or an HDF5 dataset (``file.h5`` with ``dataset=``, or
``file.h5:/path/to/data``). Energies: a text/CSV file (first column, ``#`` comments), ``.npy``,
or an HDF5 dataset; values below 100 are taken as keV and converted to eV. Every problem is a
:class:`XanesInputError` naming the file, the shape and what was expected.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from src.data.io import HDF5_SUFFIXES, TIFF_SUFFIXES, ImageReadError, natural_sort_key, read_image

__all__ = ["SPECTRA_TABLE_SUFFIXES", "XanesInputError", "is_spectra_table", "read_energies",
           "read_spectra_table", "read_spectral_stack"]

#: text files holding spectra as columns (energy first)
SPECTRA_TABLE_SUFFIXES = (".csv", ".txt", ".dat", ".tsv", ".xmu", ".nor")



class XanesInputError(ValueError):
    """A spectral stack or energy list that cannot be used; the message names the file."""


def _split_h5(spec: str | os.PathLike[str], dataset: str | None) -> tuple[Path, str | None]:
    text = str(spec)
    for suffix in HDF5_SUFFIXES:
        marker = f"{suffix}:"
        if marker in text:
            path, key = text.split(marker, 1)
            return Path(path + suffix), key
    return Path(text), dataset


def _read_h5(path: Path, key: str | None) -> np.ndarray:
    import h5py

    try:
        with h5py.File(path, "r") as f:
            if key is None:
                names: list[str] = []
                f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
                big = [n for n in names if f[n].ndim >= 3]
                if len(big) != 1:
                    raise XanesInputError(f"{path}: name the dataset (dataset=KEY or {path}:/KEY); "
                                          f"3D+ datasets found: {big or names}")
                key = big[0]
            if key not in f:
                raise XanesInputError(f"{path}: no dataset '{key}'")
            return np.asarray(f[key][()])
    except OSError as err:
        raise XanesInputError(f"{path}: unreadable HDF5 ({err})") from err


def read_energies(spec: str | os.PathLike[str], dataset: str | None = None) -> np.ndarray:
    """Energies (eV) float64 ``(E,)`` from a text/CSV, ``.npy`` or HDF5 file (see module doc)."""
    path, key = _split_h5(spec, dataset)
    if not path.exists():
        raise XanesInputError(f"{path}: energy file not found")
    suffix = path.suffix.lower()
    try:
        if suffix in HDF5_SUFFIXES:
            if key is None:
                raise XanesInputError(f"{path}: name the energy dataset (energies={path}:/KEY)")
            values = _read_h5(path, key)
        elif suffix == ".npy":
            values = np.load(path, allow_pickle=False)
        else:
            text = path.read_text().replace(",", " ").replace(";", " ")
            values = np.loadtxt(text.splitlines(), comments="#", ndmin=2)[:, 0]
    except (OSError, ValueError) as err:
        if isinstance(err, XanesInputError):
            raise
        raise XanesInputError(f"{path}: not a list of energies ({err})") from err
    values = np.asarray(values, float).ravel()
    if values.size < 2 or not np.isfinite(values).all():
        raise XanesInputError(f"{path}: need >= 2 finite energies, got {values.size}")
    if values.max() < 100:
        values = values * 1000.0
    if np.any(np.diff(values) <= 0):
        raise XanesInputError(f"{path}: energies must be strictly increasing (eV), got "
                              f"{np.round(values[:8], 2).tolist()}...")
    return values


def read_spectral_stack(
    spec: str | os.PathLike[str], n_energies: int | None = None, dataset: str | None = None
) -> np.ndarray:
    """A spectral stack ``(E, y, x)`` or ``(E, z, y, x)`` float32 (see the module doc).

    ``n_energies`` (the length of the energy list) is checked against the first axis; a stack
    whose *last* axis has that length is refused with a hint that it looks transposed.
    """
    path, key = _split_h5(spec, dataset)
    if not path.exists():
        raise XanesInputError(f"{path}: spectral stack not found")
    suffix = path.suffix.lower()
    try:
        if path.is_dir():
            files = sorted((p for p in path.iterdir() if p.suffix.lower() in TIFF_SUFFIXES),
                           key=natural_sort_key)
            if not files:
                raise XanesInputError(f"{path}: folder holds no TIFF (one image per energy)")
            images = [np.asarray(read_image(f, mmap=False)) for f in files]
            shapes = {im.shape for im in images}
            if len(shapes) != 1:
                raise XanesInputError(f"{path}: per-energy images differ in shape: {sorted(shapes)}")
            stack = np.stack(images)
        elif suffix in HDF5_SUFFIXES:
            stack = _read_h5(path, key)
        elif suffix == ".npy":
            stack = np.load(path, allow_pickle=False)
        elif suffix in TIFF_SUFFIXES:
            stack = tifffile.imread(path)
        else:
            raise XanesInputError(f"{path}: unsupported stack format '{suffix}' (TIFF, folder of "
                                  f"TIFFs, .npy, HDF5)")
    except (ImageReadError, tifffile.TiffFileError, OSError, ValueError) as err:
        if isinstance(err, XanesInputError):
            raise
        raise XanesInputError(f"{path}: unreadable spectral stack ({err})") from err
    stack = np.asarray(stack)
    if stack.ndim not in (3, 4):
        raise XanesInputError(f"{path}: expected (energy, y, x) or (energy, z, y, x), got shape {stack.shape}")
    if n_energies is not None and stack.shape[0] != n_energies:
        hint = " (the energy axis looks last: store it first)" if stack.shape[-1] == n_energies else ""
        raise XanesInputError(f"{path}: {stack.shape[0]} images along the energy axis but "
                              f"{n_energies} energies in the list; shape {stack.shape}{hint}")
    if not np.isfinite(stack).all():
        raise XanesInputError(f"{path}: stack contains NaN or infinite values")
    return stack.astype(np.float32, copy=False)



def _numeric_table(path: Path) -> tuple[np.ndarray, list[str]]:
    """Read the rows of numbers of a text table → ``(rows, header)``.

    Comma, semicolon, tab or space separated; ``#`` comments and a non-numeric header line skipped.
    """
    header: list[str] = []
    rows: list[list[float]] = []
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as err:
        raise XanesInputError(f"{path}: unreadable spectra table ({err})") from err
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = [p for p in text.replace(",", " ").replace(";", " ").replace("\t", " ").split() if p]
        try:
            rows.append([float(p) for p in parts])
        except ValueError:
            if not rows:  # a header line before the numbers
                header = [p.strip() for p in text.replace(";", ",").replace("\t", ",").split(",")]
                if len(header) == 1:
                    header = text.split()
                continue
            raise XanesInputError(f"{path}: line {text[:60]!r} is not numbers") from None
    widths = {len(r) for r in rows}
    if not rows or len(widths) != 1:
        raise XanesInputError(f"{path}: expected rows of equal length (energy, spectrum, ...), got "
                              f"{len(rows)} rows of widths {sorted(widths)}")
    return np.asarray(rows, float), header


def is_spectra_table(spec: str | os.PathLike[str]) -> bool:
    """True for a text table of spectra or a folder of two-column spectrum files (not TIFFs)."""
    path = Path(str(spec))
    if path.is_dir():
        files = [p for p in path.iterdir() if p.is_file()]
        return bool(files) and all(p.suffix.lower() in SPECTRA_TABLE_SUFFIXES for p in files)
    return path.suffix.lower() in SPECTRA_TABLE_SUFFIXES


def read_spectra_table(spec: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Point spectra as an ``(E, N)`` stack: ``(energies_eV, stack, names)``.

    ``spec``: a text table (CSV/TXT, comma/semicolon/tab/space separated) with the energy in the
    first column and one spectrum per further column (a header line names them), or a folder of
    two-column files (energy, absorption; naturally sorted, one spectrum each; interpolated on
    the energies of the first file where they differ). Energies below 100 are keV.

    Raises:
        XanesInputError: naming the file: not numbers, one column only, energies not strictly
            increasing, files of a folder that do not overlap.
    """
    path = Path(str(spec))
    if not path.exists():
        raise XanesInputError(f"{path}: spectra table not found")
    if path.is_dir():
        files = sorted((p for p in path.iterdir() if p.is_file()), key=natural_sort_key)
        if not files:
            raise XanesInputError(f"{path}: folder holds no spectrum files")
        spectra = []
        for f in files:
            data, _ = _numeric_table(f)
            if data.shape[1] < 2:
                raise XanesInputError(f"{f}: expected two columns (energy, absorption), got {data.shape[1]}")
            e = data[:, 0] * (1000.0 if data[:, 0].max() < 100 else 1.0)
            if np.any(np.diff(e) <= 0):
                raise XanesInputError(f"{f}: energies (first column) must be strictly increasing")
            spectra.append((f, e, data[:, 1]))
        energies = spectra[0][1]
        cols = []
        for f, e, mu in spectra:
            if e[0] > energies[0] + 1e-6 or e[-1] < energies[-1] - 1e-6:
                raise XanesInputError(f"{f}: spans {e[0]:.1f}-{e[-1]:.1f} eV, less than the first file "
                                      f"{spectra[0][0].name} ({energies[0]:.1f}-{energies[-1]:.1f} eV)")
            cols.append(np.interp(energies, e, mu))
        return energies, np.stack(cols, 1).astype(np.float32), [f.stem for f, _, _ in spectra]
    data, header = _numeric_table(path)
    if data.shape[1] < 2:
        raise XanesInputError(f"{path}: expected the energy in the first column and >= 1 spectrum "
                              f"column, got {data.shape[1]} column")
    energies = data[:, 0] * (1000.0 if data[:, 0].max() < 100 else 1.0)
    if np.any(np.diff(energies) <= 0):
        raise XanesInputError(f"{path}: energies (first column) must be strictly increasing, got "
                              f"{np.round(energies[:6], 2).tolist()}...")
    names = header[1:] if len(header) == data.shape[1] else [f"spectrum_{i}" for i in range(1, data.shape[1])]
    if not np.isfinite(data).all():
        raise XanesInputError(f"{path}: the table holds NaN or infinite values")
    return energies, data[:, 1:].astype(np.float32), names
