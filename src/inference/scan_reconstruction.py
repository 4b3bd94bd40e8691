"""A scan into a volume (the body of ``reconstruct.py``), with typed settings.

:func:`reconstruct_scan` reads the projections (:func:`src.data.projections.open_scan`: Data
Exchange HDF5 with ``exchange/data``, ``data_white``, ``data_dark`` and ``theta`` in degrees,
Zeiss/Xradia TXRM/XRM, TIFF stacks / folders / ``.npy`` with separate flat, dark and angle
files), tomopy-ordered ``(angles, rows, columns)`` and lazily, a block of rows at a time:
flat/dark correction (mean frames), ``-log``, optional zinger and ring removal and Paganin phase
retrieval, then FBP / gridrec / SIRT / CGLS / TV (:func:`src.recon.recon`) or a learned net
(an LPD / LGD / FBPConvNet checkpoint of ``train.py``). The rotation centre is found by Vo's
method on a few rows (``center="auto"``; ``center_fit="tilt"`` fits it per row), or
``center="scan"`` writes a PNG of trial reconstructions to choose from. The volume
``(rows, columns, columns)``, attenuation per voxel, is written block by block (float32 TIFF,
HDF5 or Zarr: dataset/array ``volume``) under a hidden partial name and moved into place when
complete; a killed run resumes where it stopped when started again with the same settings.
Every choice is recorded in the output's metadata, and a PNG of the central slices is written
beside it.

It sits in the inference room: it reads beamline files (``src.data.projections``) and applies
learned checkpoints (``src.models``), and like :mod:`src.inference.volume_prediction` it is a
resumable, out-of-core whole-volume job.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf
from tqdm.auto import tqdm

from src.config import resolve_device
from src.data.io import write_json, write_tiff
from src.data.io.checks import check_output_file
from src.data.io.volumes import split_key
from src.data.projections import ProjectionScan, open_scan
from src.recon.centre import find_center_vo
from src.recon.fbp import ALGORITHMS, check_projections, recon
from src.recon.preprocessing import (
    minus_log,
    normalize,
    remove_outliers,
    remove_stripe_fw,
    remove_stripe_sorting,
    retrieve_phase,
)

__all__ = [
    "CENTER_ERROR",
    "METHODS",
    "OUTPUT_KINDS",
    "ReconstructionSettings",
    "auto_center",
    "parse_center",
    "preprocess_rows",
    "reconstruct_learned",
    "reconstruct_scan",
    "write_center_scan",
]


@dataclass
class ReconstructionSettings:
    """Everything :func:`reconstruct_scan` needs.

    The fields are the keys of ``conf/reconstruct.yaml`` (its comments say what each one does) with
    its defaults.

    Attributes:
        input: the scan: Data Exchange HDF5 (``FILE.h5[:KEY]``), TXRM/XRM, TIFF stack or
            folder, or ``.npy``, shaped ``(angles, rows, columns)``.
        output: the volume ``(rows, columns, columns)``: ``.tif``, ``.h5`` or ``.zarr``.
        dataset, flat, dark, flat_dataset, dark_dataset, theta_dataset: where projections,
            flats, darks and angles are (None: found in ``input``).
        theta: a file, a list of angles or ``"even"`` (None: from ``input``); ``theta_unit``
            ``"rad"`` or ``"deg"``.
        minus_log: ``"auto"`` (``-log`` when there are flats), True or False.
        zinger_removal, zinger_threshold: outlier removal (relative threshold).
        ring_removal, ring_method, ring_size, ring_sigma: stripe removal (``"sorting"`` or
            ``"fw"``).
        phase_retrieval, pixel_size_nm, energy_ev, distance_cm, alpha, phase_margin: Paganin
            (pixel size and energy from the file when None; ``phase_margin`` rows read around a
            block).
        center: ``"auto"``, ``"scan"`` or a column; ``center_rows``, ``center_fit``
            (``"median"`` | ``"tilt"``), ``center_ratio``, ``center_range`` (``[start, stop,
            step]`` of ``center="scan"``).
        rows: ``[start, stop)`` detector rows (None: all).
        algorithm: ``fbp | gridrec | sirt | cgls | tv | learned``; ``backend``, ``num_iter``,
            ``filter_name``, ``algorithm_kwargs`` go to :func:`src.recon.recon`.
        ckpt_path, mu: the checkpoint of ``algorithm="learned"`` and its attenuation unit.
        batch_size: rows read, reconstructed and written per block.
        device: ``cpu | cuda | auto``; progress: show the progress bar.
    """

    input: str
    output: str
    dataset: str | None = None
    flat: str | None = None
    dark: str | None = None
    flat_dataset: str | None = None
    dark_dataset: str | None = None
    theta_dataset: str | None = None
    minus_log: bool | str = "auto"
    zinger_removal: bool = False
    zinger_threshold: float = 0.1
    ring_removal: bool = False
    ring_method: str = "sorting"
    ring_size: int = 21
    ring_sigma: float = 2.0
    phase_retrieval: bool = False
    pixel_size_nm: float | None = None
    energy_ev: float | None = None
    distance_cm: float = 1.0
    alpha: float = 1e-3
    phase_margin: int = 32
    theta: Any = None
    theta_unit: str = "rad"
    center: Any = "auto"
    center_rows: int = 5
    center_fit: str = "median"
    center_ratio: float = 0.5
    center_range: list[float] | None = None
    rows: list[int] | None = None
    algorithm: str = "fbp"
    backend: str = "torch"
    num_iter: int | None = None
    filter_name: str = "ramp"
    algorithm_kwargs: dict[str, Any] = field(default_factory=dict)
    ckpt_path: str | None = None
    mu: float | None = None
    batch_size: int = 32
    device: str = "cpu"
    progress: bool = True

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> ReconstructionSettings:
        """The settings of a composed ``reconstruct`` config.

        Keys that are not fields, such as ``task_name``, ``paths`` or ``hydra``, are left out.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: _container(cfg[k]) for k in cfg.keys() if k in names}
        for key in ("input", "output"):
            if values.get(key) is not None:
                values[key] = str(values[key])
        return cls(**values)


log = logging.getLogger("reconstruct")

METHODS = (*ALGORITHMS, "learned")
CENTER_ERROR = "center={!r}: expected a column number, auto or scan"


def _container(value: Any) -> Any:
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def open_input(s: ReconstructionSettings) -> ProjectionScan:
    """The scan of ``s.input`` with ``flat``/``dark``/``theta`` overrides, checked."""
    theta = _container(s.theta)
    scan = open_scan(s.input, dataset=s.dataset, flat=s.flat, dark=s.dark, theta=theta,
                     theta_unit=s.theta_unit, flat_dataset=s.flat_dataset,
                     dark_dataset=s.dark_dataset, theta_dataset=s.theta_dataset)
    if scan.theta is None:
        scan.close()
        raise ValueError(f"{s.input}: the file has no angles (Data Exchange key "
                         f"{s.theta_dataset or 'exchange/theta'!r}, TXRM "
                         "'ImageInfo/Angles'); give theta=FILE, theta=[...] or theta=even "
                         "(evenly spaced over [0, pi))")
    if scan.dark is not None and scan.flat is None:
        scan.close()
        raise ValueError(f"{s.input}: darks ({scan.source['dark']}) without flats: give "
                         "flat=... too")
    return scan


def _phase_margin(scan: ProjectionScan, s: ReconstructionSettings) -> int:
    """Rows read above and below a block for Paganin's filter (0 when it is off)."""
    if not s.phase_retrieval:
        return 0
    return int(s.phase_margin)


def phase_parameters(scan: ProjectionScan, s: ReconstructionSettings) -> dict[str, float]:
    """Paganin's parameters: pixel size and energy from the file unless given in the config."""
    pixel_nm = s.pixel_size_nm or scan.pixel_size_nm
    energy_ev = s.energy_ev or scan.energy_ev
    if not pixel_nm or not energy_ev:
        raise ValueError(f"{scan.path}: phase_retrieval=true needs the pixel size and energy "
                         "(not in the file): give pixel_size_nm=... energy_ev=...")
    return {"pixel_size": float(pixel_nm) * 1e-7, "energy": float(energy_ev) / 1e3,
            "dist": float(s.distance_cm), "alpha": float(s.alpha)}


def preprocess_rows(block: np.ndarray | None, scan: ProjectionScan, start: int, stop: int,
                    s: ReconstructionSettings, rings: bool = True) -> np.ndarray:
    """Rows ``[start, stop)`` -> line integrals ``(angles, n, cols)``.

    Flat/dark (mean frames), zingers, Paganin phase retrieval (with ``phase_margin`` rows read
    around the block), ``-log``, rings (``rings=False`` skips the ring removal). ``block`` is the
    raw rows, or None to read them from ``scan``.
    """
    margin = _phase_margin(scan, s)
    lo, hi = max(0, start - margin), min(scan.shape[1], stop + margin)
    if margin or block is None:
        block = scan.rows(lo, hi)
    else:
        lo, hi = start, stop
    flat = scan.flat_rows(lo, hi)
    if flat is not None:
        dark = scan.dark_rows(lo, hi)
        block = normalize(block, flat, dark if dark is not None else np.zeros_like(flat))
    if s.zinger_removal:  # on counts / transmission, before the log
        block = remove_outliers(block, float(s.zinger_threshold))
    if margin:
        block = retrieve_phase(block, **phase_parameters(scan, s))[:, start - lo:stop - lo]
    take_log = s.minus_log
    if take_log == "auto":
        take_log = flat is not None
        if flat is None and np.issubdtype(np.dtype(getattr(scan.data, "dtype", np.float32)),
                                          np.integer) and not getattr(scan, "_warned", False):
            log.warning("%s: integer counts without flats are taken as line integrals; give "
                        "flat=... (and dark=...) or minus_log=true", scan.path)
            scan._warned = True  # type: ignore[attr-defined]
    if take_log:
        block = minus_log(block)
    if rings and s.ring_removal:
        method = str(s.ring_method)
        if method == "sorting":
            block = remove_stripe_sorting(block, size=int(s.ring_size))
        elif method == "fw":
            block = remove_stripe_fw(block, sigma=float(s.ring_sigma))
        else:
            raise ValueError(f"ring_method={method!r}: expected sorting or fw")
    return block


def parse_center(value: Any, cols: int) -> float | str:
    """``auto``/``scan`` or a column inside the detector; anything else is refused clearly."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return "auto"
    if isinstance(value, str) and value.strip().lower() == "scan":
        return "scan"
    if isinstance(value, bool):
        raise ValueError(CENTER_ERROR.format(value))
    try:
        center = float(value)
    except (TypeError, ValueError):
        raise ValueError(CENTER_ERROR.format(value)) from None
    if not (math.isfinite(center) and 0.0 <= center <= cols):
        raise ValueError(f"center={value}: outside the detector (columns 0 .. {cols})")
    return center


def _sample_rows(lo: int, hi: int, count: int) -> list[int]:
    if hi - lo <= count:
        return list(range(lo, hi))
    return sorted({int(round(v)) for v in np.linspace(lo + 0.1 * (hi - lo),
                                                      hi - 1 - 0.1 * (hi - lo), count)})


def auto_center(scan: ProjectionScan, theta: np.ndarray, lo: int, hi: int,
                s: ReconstructionSettings) -> tuple[np.ndarray, dict[str, Any]]:
    """Per-row centres for rows ``[lo, hi)``, and what was found, for the log and metadata.

    The centres come from Vo's method on a few rows (median, or a line through them with
    ``center_fit=tilt``).
    """
    rows = _sample_rows(lo, hi, int(s.center_rows))
    cols = scan.shape[2]
    n_angles = theta.size
    half = theta < np.pi - 1e-6  # Vo's method wants [0, pi)
    found = []
    step = max(1, int(np.count_nonzero(half)) // 720)  # plenty of angles for the metric
    for r in rows:
        # no ring removal here: on one row of few angles the sorting filter can move the centre
        line = preprocess_rows(scan.rows(r, r + 1), scan, r, r + 1, s, rings=False)[:, 0]
        sino = line[half][::step] if half.sum() >= n_angles // 2 else line[::step]
        found.append(find_center_vo(sino, smin=-cols / 4, smax=cols / 4,
                                    ratio=float(s.center_ratio)))
    found_a = np.asarray(found)
    # Vo's metric can have a spurious minimum at the far end of the search (the mirrored
    # sinogram shifted mostly off the detector): such rows, and rows far from the others, are
    # left out of the fit (the robust part).
    keep = np.abs(found_a - cols / 2) < cols / 4 - 1.0
    if not keep.any():
        keep[:] = True
    fit = str(s.center_fit)
    if fit not in ("median", "tilt"):
        raise ValueError(f"center_fit={fit!r}: expected median or tilt")
    rows_f = np.asarray(rows, dtype=np.float64)
    rows_all = np.arange(lo, hi)
    slope, icept = 0.0, float(np.median(found_a[keep]))
    for _ in range(3):
        if fit == "tilt" and keep.sum() >= 2:
            slope, icept = np.polyfit(rows_f[keep], found_a[keep], 1)
        else:
            slope, icept = 0.0, float(np.median(found_a[keep]))
        resid = np.abs(found_a - (icept + slope * rows_f))
        new_keep = resid <= max(1.0, 2.0 * float(np.median(resid[keep])))
        if new_keep.sum() < max(1, keep.sum() // 2) or np.array_equal(new_keep, keep):
            break
        keep = new_keep
    centers = icept + slope * rows_all
    info = {"method": "vo", "fit": fit if keep.sum() >= 2 or fit == "median" else "median",
            "rows": rows, "found": [round(float(v), 3) for v in found_a],
            "used": [int(r) for r, k in zip(rows, keep, strict=True) if k]}
    if fit == "tilt":
        info.update({"slope_px_per_row": float(slope), "intercept": float(icept)})
    if not keep.all():
        log.warning("center=auto: rows %s disagree with the others (%s) and are left out; "
                    "check with center=scan", [r for r, k in zip(rows, keep, strict=True)
                                               if not k], info["found"])
    return centers, info


def write_center_scan(scan: ProjectionScan, theta: np.ndarray, row: int, s: ReconstructionSettings,
                      path: Path) -> list[float]:
    """PNG of FBP slices of ``row`` at trial centres (tomopy's ``write_center``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = scan.shape[2]
    spec = _container(s.center_range) or [cols / 2 - 10, cols / 2 + 10, 2]
    lo, hi, step = (float(v) for v in spec)
    trials = [float(c) for c in np.arange(lo, hi + 1e-9, step) if 0 <= c <= cols]
    line = preprocess_rows(scan.rows(row, row + 1), scan, row, row + 1, s)
    tomo = np.repeat(line, len(trials), axis=1)
    recs = recon(tomo, theta, center=np.asarray(trials), filter_name=s.filter_name)
    n = len(trials)
    ncol = min(n, 5)
    nrow = math.ceil(n / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3 * ncol, 3 * nrow), squeeze=False)
    lo_v, hi_v = np.percentile(recs, [1, 99])
    for ax, rec, c in zip(axes.ravel(), recs, trials, strict=False):
        ax.imshow(rec, cmap="gray", vmin=lo_v, vmax=hi_v)
        ax.set_title(f"center={c:g}", fontsize=9)
    for ax in axes.ravel():
        ax.axis("off")
    fig.suptitle(f"{s.input}, row {row}: choose center=...")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return trials


def _device(name: str) -> torch.device:
    return torch.device(resolve_device(name))


def reconstruct_learned(
    tomo: np.ndarray, theta: np.ndarray, center: float | None, ckpt_path: str | Path,
    mu: float | None = None, batch_size: int = 16, device: str = "cpu", progress: bool = True,
) -> np.ndarray:
    """Slice-by-slice reconstruction ``(angles, rows, cols) -> (rows, H, W)`` with a trained net.

    The net's sinogram shape (angles, detector bins) must match the data; the measured angles
    and centre replace the training geometry when they differ. Line integrals are divided by the
    training ``mu`` (attenuation per pixel of a unit value) and the output multiplied by it, so
    the volume is in attenuation per voxel like FBP's.
    """
    from src.models.checkpoint import load_reconstruction_checkpoint
    from src.models.nets.reconstruction import make_projector
    from src.simulation.sinograms import attenuation_unit

    dev = _device(device)
    module, data_hp = load_reconstruction_checkpoint(ckpt_path, map_location=dev)
    net = module.net
    op = net.projector
    n_angles, rows, cols = tomo.shape
    if (n_angles, cols) != op.sino_shape:
        raise ValueError(
            f"{ckpt_path} was trained on sinograms of {op.sino_shape[0]} angles x "
            f"{op.sino_shape[1]} detector columns, the projections have {n_angles} x {cols}; "
            f"resample or crop the projections, or train with data.n_angles={n_angles} "
            f"data.n_det={cols}")
    new_center = op.center if center is None else float(center)
    if not (np.allclose(theta, op.theta.numpy(), atol=1e-6) and new_center == op.center):
        net.set_projector(make_projector(op.image_shape, theta=theta, n_det=cols, center=new_center))
    unit = attenuation_unit(int(data_hp.get("image_size", op.image_shape[1])),
                            mu if mu is not None else data_hp.get("mu"))
    out = np.empty((rows, *op.image_shape), dtype=np.float32)
    starts = range(0, rows, batch_size)
    with torch.no_grad():
        for z in tqdm(starts, desc=f"{module.hparams.get('name', 'learned')} slices",
                      unit="batch", disable=not progress):
            sino = np.ascontiguousarray(tomo[:, z:z + batch_size].transpose(1, 0, 2)) / unit
            x = module(torch.from_numpy(sino.astype(np.float32))[:, None].to(dev))
            out[z:z + batch_size] = (x[:, 0] * unit).cpu().numpy()
    return out


def _check_config(s: ReconstructionSettings) -> str:
    algorithm = str(s.algorithm).lower()
    if algorithm not in METHODS:
        raise ValueError(f"unknown algorithm {s.algorithm!r}; choose one of {METHODS}")
    if algorithm == "learned":
        if not s.ckpt_path:
            raise ValueError("algorithm=learned needs ckpt_path=... (a train.py checkpoint of "
                             "model=lpd, lgd or fbpconvnet)")
        if not Path(s.ckpt_path).is_file():
            raise FileNotFoundError(f"checkpoint {s.ckpt_path} does not exist")
    suffix = Path(str(s.output)).suffix.lower()
    if suffix not in OUTPUT_KINDS:
        raise ValueError(f"output={s.output}: expected a volume file ending in "
                         f"{', '.join(OUTPUT_KINDS)}")
    if algorithm == "learned" and OUTPUT_KINDS[suffix] != "tiff":
        raise ValueError(f"output={s.output}: algorithm=learned writes a .tif volume")
    if OUTPUT_KINDS[suffix] != "zarr" and Path(str(s.output)).is_dir():
        raise IsADirectoryError(f"output={s.output} is an existing folder; expected a volume file name")
    inputs = [str(split_key(s.input)[0])] + [str(getattr(s, k)) for k in ("flat", "dark", "theta")
                                               if isinstance(getattr(s, k), str)]
    check_output_file(str(s.output), "output", inputs=inputs)  # writable, not an input: before any work
    return algorithm


OUTPUT_KINDS = {".tif": "tiff", ".tiff": "tiff", ".h5": "hdf5", ".hdf5": "hdf5",
                ".zarr": "zarr"}
VOLUME_KEY = "volume"  # the dataset/array name in HDF5 and Zarr outputs


def _partial_paths(output: Path) -> tuple[Path, Path]:
    return (output.with_name(f".{output.name}.partial{output.suffix}"),
            output.with_name(f".{output.name}.partial.json"))


class _VolumeWriter:
    """Block-by-block writes into a partial TIFF (memmap), HDF5 dataset or Zarr array."""

    def __init__(self, path: Path, kind: str, shape: tuple[int, int, int] | None,
                 meta: dict[str, Any]) -> None:
        self.kind, self.handle = kind, None
        create = shape is not None
        if kind == "tiff":
            import tifffile

            if create:
                self.array = tifffile.memmap(path, shape=shape, dtype=np.float32,
                                             photometric="minisblack", metadata=meta,
                                             bigtiff=int(np.prod(shape)) * 4 > 2**31 - 2**25)
            else:
                self.array = tifffile.memmap(path, mode="r+")
        elif kind == "hdf5":
            import h5py

            self.handle = h5py.File(path, "w" if create else "r+")
            if create:
                self.array = self.handle.create_dataset(
                    VOLUME_KEY, shape=shape, dtype="float32", chunks=(1, *shape[1:]))
                self.handle.attrs["metadata"] = json.dumps(meta, default=str)
            else:
                self.array = self.handle[VOLUME_KEY]
        else:
            import zarr

            if create:
                group = zarr.open_group(str(path), mode="w")
                self.array = group.create_array(VOLUME_KEY, shape=shape, dtype="float32",
                                                chunks=(1, *shape[1:]), fill_value=0.0)
                group.attrs.update(json.loads(json.dumps(meta, default=str)))
            else:
                self.array = zarr.open_group(str(path), mode="r+")[VOLUME_KEY]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(v) for v in self.array.shape)

    def __setitem__(self, key: slice, value: np.ndarray) -> None:
        self.array[key] = value

    def flush(self) -> None:
        if self.kind == "tiff":
            self.array.flush()
        elif self.handle is not None:
            self.handle.flush()

    def close(self) -> None:
        self.flush()
        if self.handle is not None:
            self.handle.close()
        self.array = None


def _open_output(output: Path, shape: tuple[int, int, int], meta: dict[str, Any],
                 key: str) -> tuple[_VolumeWriter, int]:
    """The partial output and the first row still to do (resuming a killed run)."""
    kind = OUTPUT_KINDS[output.suffix.lower()]
    partial, state_path = _partial_paths(output)
    if partial.exists() and state_path.is_file():
        try:
            state = json.loads(state_path.read_text())
            if state.get("key") != key:
                log.warning("%s: the unfinished output was made from another input or other settings "
                            "(the input changed since?): starting again, not resuming", output)
            else:
                writer = _VolumeWriter(partial, kind, None, meta)
                if writer.shape == shape:
                    log.info("resuming %s at row %d of %d", output, state["done"], shape[0])
                    return writer, int(state["done"])
                writer.close()
        except (OSError, ValueError, KeyError):
            pass
    output.parent.mkdir(parents=True, exist_ok=True)
    if partial.is_dir():
        shutil.rmtree(partial)
    writer = _VolumeWriter(partial, kind, shape, meta)
    write_json(state_path, {"key": key, "done": 0})
    return writer, 0


def _finish_output(output: Path) -> Any:
    """Move the complete partial output into place; return the volume, opened read-only."""
    partial, state_path = _partial_paths(output)
    kind = OUTPUT_KINDS[output.suffix.lower()]
    if output.is_dir():
        shutil.rmtree(output)
    os.replace(partial, output)
    state_path.unlink(missing_ok=True)
    if kind == "tiff":
        import tifffile

        return tifffile.memmap(output, mode="r")
    if kind == "hdf5":
        import h5py

        return h5py.File(output, "r")[VOLUME_KEY]
    import zarr

    return zarr.open_group(str(output), mode="r")[VOLUME_KEY]


def _write_preview(output: Path, volume: np.ndarray) -> Path:
    """PNG of the central slices (z, y and x) beside the volume."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    z, y, x = (s // 2 for s in volume.shape)
    views = [("z", volume[z]), ("y", volume[:, y]), ("x", volume[:, :, x])]
    lo, hi = np.percentile(volume[z], [1, 99])
    fig, axes = plt.subplots(1, 3, figsize=(12, 4))
    for ax, (name, img) in zip(axes, views, strict=True):
        ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, aspect="auto")
        ax.set_title(f"central {name} slice")
        ax.axis("off")
    fig.tight_layout()
    path = output.with_name(output.stem + "_preview.png")
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def reconstruct_scan(s: ReconstructionSettings) -> np.ndarray | None:
    """Read, preprocess, reconstruct and write a scan (see the module doc).

    Returns the volume (a read-only memory map of the written TIFF), or None for ``center=scan``.
    """
    algorithm = _check_config(s)
    output = Path(str(s.output))
    with open_input(s) as scan:
        theta = scan.theta
        assert theta is not None
        n_angles, n_rows, cols = scan.shape
        lo, hi = 0, n_rows
        if s.rows is not None:
            lo, hi = (int(v) for v in s.rows)
            lo, hi = max(0, lo), min(n_rows, hi)
            if hi <= lo:
                raise ValueError(f"rows={list(s.rows)} selects no detector row "
                                 f"({s.input} has {n_rows})")
        rows = hi - lo
        center_mode = parse_center(s.center, cols)
        log.info("%s: %d angles x %d rows x %d columns (%s), %s", s.input, n_angles, rows,
                 cols, ", ".join(f"{k} from {v}" for k, v in scan.source.items()), algorithm)
        if center_mode == "scan":
            png = output.with_name(output.stem + "_center_scan.png")
            trials = write_center_scan(scan, theta, (lo + hi) // 2, s, png)
            log.info("center=scan: wrote %s (centres %s); rerun with center=<the best>", png,
                     trials)
            return None
        if center_mode == "auto":
            centers, center_info = auto_center(scan, theta, lo, hi, s)
            log.info("center=auto: %s", center_info)
        else:
            centers = np.full(rows, float(center_mode))
            center_info = {"method": "given"}
        if np.any(centers < 0) or np.any(centers > cols):
            raise ValueError(f"{s.input}: the centre found ({center_info.get('found')}) is "
                             f"outside the detector (0 .. {cols}); give center=COLUMN or "
                             "center=scan")
        options = {k: getattr(s, k) for k in (
            "minus_log", "zinger_removal", "zinger_threshold", "ring_removal", "ring_method",
            "ring_size", "ring_sigma",
            "phase_retrieval", "filter_name", "num_iter", "algorithm_kwargs", "backend")}
        if s.phase_retrieval:
            options["paganin"] = phase_parameters(scan, s)
        meta = {"algorithm": algorithm, "input": str(s.input), "sources": scan.source,
                "n_angles": n_angles, "rows": [lo, hi],
                "center": float(np.median(centers)) if center_info.get("fit") != "tilt"
                else [float(centers[0]), float(centers[-1])],
                "center_info": center_info, "flats": scan.flat is not None,
                "darks": scan.dark is not None, "preprocessing": options,
                "pixel_size_nm": scan.pixel_size_nm, "energy_ev": scan.energy_ev,
                "ckpt_path": str(s.ckpt_path) if algorithm == "learned" else None,
                "units": "attenuation per voxel"}
        if algorithm == "learned":
            tomo = check_projections(preprocess_rows(scan.rows(lo, hi), scan, lo, hi, s), theta)
            volume = reconstruct_learned(tomo, theta, float(np.median(centers)), s.ckpt_path,
                                         s.mu, int(s.batch_size), str(s.device),
                                         bool(s.progress))
            write_tiff(output, volume, metadata=meta)
            _write_preview(output, volume)
            log.info("wrote %s %s", output, volume.shape)
            return volume
        info = Path(scan.path).stat()  # a resumed run refuses an input that changed since
        key = hashlib.sha256(json.dumps(
            {**meta, "centers": [round(float(c), 6) for c in centers],
             "input_stat": [info.st_size, info.st_mtime_ns]}, sort_keys=True,
            default=str).encode()).hexdigest()
        vol, done = _open_output(output, (rows, cols, cols), meta, key)
        extra = s.algorithm_kwargs
        kwargs = dict(_container(extra)) if extra else {}
        step = int(s.batch_size)
        state_path = _partial_paths(output)[1]
        try:
            with tqdm(total=rows, initial=done, desc=f"{algorithm}", unit="slice",
                      disable=not s.progress) as bar:
                for z in range(done, rows, step):
                    stop = min(z + step, rows)
                    block = preprocess_rows(scan.rows(lo + z, lo + stop), scan, lo + z,
                                            lo + stop, s)
                    block = check_projections(block, theta)
                    vol[z:stop] = recon(
                        block, theta, center=centers[z:stop], algorithm=algorithm,
                        backend=s.backend, num_iter=s.num_iter,
                        filter_name=s.filter_name, chunk=step,
                        device=_device(str(s.device)), **kwargs)
                    vol.flush()
                    write_json(state_path, {"key": key, "done": stop})
                    bar.update(stop - z)
        finally:
            vol.close()
    volume = _finish_output(output)
    _write_preview(output, volume)
    log.info("wrote %s %s", output, volume.shape)
    return volume


