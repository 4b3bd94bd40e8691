"""3D statistics of label volumes larger than memory, chunk by chunk on dask.

The volume is opened lazily (TIFF through tifffile's Zarr store, Zarr, HDF5, ``.npy`` memory
map) as a dask array and never loaded whole. Each statistic is made exact by construction:

* volume fractions: voxel counts summed per chunk;
* surface and interface areas: slabs along z with :func:`~src.analysis.surfaces.slab_halo`
  voxels of context on each side, each slab keeping the marching-cubes triangles whose centroid
  falls in its own z window, so that the slab sums equal the whole-volume mesh;
* particles: 6-connected components of the particle phase, labelled per z-slab
  (``scipy.ndimage.label``) and joined across the slab faces as the connected components of
  the graph of touching labels; only each slab's sizes and its two face planes are kept.
  (Touching particles are not split here: the watershed separation of the in-memory path needs
  each particle whole);
* local thickness: porespy per block with a halo of the phase's largest inscribed diameter
  (the distance-transform maximum, found chunk-wise first), which makes it exact;
* tortuosity: on central sub-volumes of growing size (the representative-volume curve; MATBOX's
  practice), with the relative change between the last two sizes as the plateau criterion.

``cluster``: the address of an existing ``distributed`` scheduler (e.g. from ``dask-jobqueue``
on SLURM); None runs on threads in this process.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from src.analysis.morphology import check_labels, remap_labels, surface_table
from src.analysis.particles import weighted_quantiles
from src.analysis.surfaces import SURFACE_SIGMA, PhaseSurface, phase_surface, slab_halo
from src.analysis.transport import tortuosity_factor
from src.data.io import HDF5_SUFFIXES
from src.data.io.volumes import split_key

__all__ = ["chunked_statistics", "connect", "open_lazy", "rev_tortuosity"]

log = logging.getLogger(__name__)


#: voxels of one surface slab (its thickness follows the plane size): ~1.6 GB while meshed (a
#: 1024^2 x 46 slab of an electrode, measured)
SLAB_VOXELS = 32 * 2**20


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".tif", ".tiff"):
        return "tiff"
    if suffix == ".zarr" or path.is_dir():
        return "zarr"
    if suffix in HDF5_SUFFIXES:
        return "hdf5"
    if suffix == ".npy":
        return "npy"
    raise ValueError(f"{path}: expected a .tif/.tiff, .zarr, .h5/.hdf5 or .npy volume")


@contextlib.contextmanager
def _opened(path: Path, dataset: str | None, kind: str) -> Iterator[Any]:
    """The volume as a sliceable array (TIFF: tifffile's Zarr store: pages read on demand)."""
    if kind == "tiff":
        import tifffile
        import zarr

        store = tifffile.imread(path, aszarr=True)
        try:
            yield zarr.open(store, mode="r")
        finally:
            store.close()
    elif kind == "zarr":
        import zarr

        yield zarr.open(str(path), mode="r")
    elif kind == "hdf5":
        import h5py

        with h5py.File(path, "r") as handle:
            if not dataset or dataset not in handle:
                keys: list[str] = []
                handle.visit(lambda k: keys.append(k) if isinstance(handle[k], h5py.Dataset) else None)
                raise KeyError(f"{path}: dataset {dataset!r} not found; datasets: {keys[:10]}")
            yield handle[dataset]
    else:
        yield np.load(path, mmap_mode="r")


def _region(path: Path, dataset: str | None, kind: str, block_info: Any = None) -> np.ndarray:
    """One block of the volume, opened by path (picklable: runs on any dask worker)."""
    (z0, z1), (y0, y1), (x0, x1) = block_info[None]["array-location"]
    with _opened(path, dataset, kind) as array:
        return np.asarray(array[z0:z1, y0:y1, x0:x1])


def open_lazy(path: str | Path, dataset: str | None = None, chunks: int | tuple[int, ...] = 128) -> Any:
    """A (z, y, x) volume as a lazy dask array: TIFF, Zarr, HDF5 or ``.npy``.

    HDF5 by ``dataset`` or as ``file.h5:/key``. Each block opens the file by its path, so the
    array also runs on a ``distributed`` cluster.

    Args:
        path: the file (or ``.zarr`` folder).
        dataset: the HDF5 dataset path when ``path`` is HDF5.
        chunks: dask chunk side (voxels), or one per axis.

    Returns:
        ``dask.array.Array`` shaped (z, y, x).
    """
    import dask.array as da
    from dask.array.core import normalize_chunks

    path, key = split_key(path)
    dataset = key or dataset
    path = path.resolve()
    if not path.exists():
        raise FileNotFoundError(f"volume {path} not found")
    kind = _kind(path)
    with _opened(path, dataset, kind) as array:
        shape, dtype = tuple(array.shape), np.dtype(array.dtype)
    if len(shape) != 3:
        raise ValueError(f"{path}: expected a 3D (z, y, x) volume, got shape {shape}")
    return da.map_blocks(_region, path, dataset, kind, dtype=dtype,
                         chunks=normalize_chunks(chunks, shape, dtype=dtype),
                         meta=np.empty((0, 0, 0), dtype))


@contextlib.contextmanager
def connect(cluster: str | None, timeout_s: float = 10.0) -> Iterator[Any]:
    """A ``distributed.Client`` on the scheduler at ``cluster`` for the ``with`` block.

    None: dask's threads, no client. Raises ``ConnectionError`` naming the address when it does
    not answer within ``timeout_s``.
    """
    if not cluster:
        yield None
        return
    from distributed import Client

    try:
        client = Client(cluster, timeout=f"{timeout_s}s")
    except (OSError, TimeoutError) as exc:
        raise ConnectionError(f"cluster={cluster!r}: no dask scheduler answered within {timeout_s:.0f} s "
                              f"({exc}); start one (dask scheduler / dask-jobqueue) or leave cluster=null") from exc
    try:
        yield client
    finally:
        client.close()


def _as_phases(block: np.ndarray, class_names: list[str], label_values: Sequence[int] | None,
               source: str) -> np.ndarray:
    """One block as phase indices, with the in-memory path's checks and messages."""
    block = np.asarray(block)
    if label_values is not None:
        block = remap_labels(block, label_values, source)
    return check_labels(block, class_names, source)


def _slabs(depth: int, slab: int, halo: int) -> Iterator[tuple[int, int, int, int]]:
    """(z0, z1, s0, s1): the window [z0, z1) of each slab and the read range [s0, s1)."""
    for z0 in range(0, depth, slab):
        z1 = min(z0 + slab, depth)
        yield z0, z1, max(z0 - halo, 0), min(z1 + halo, depth)


def chunked_statistics(
    path: str | Path,
    class_names: Sequence[str],
    voxel_size_nm: float,
    *,
    label_values: Sequence[int] | None = None,
    dataset: str | None = None,
    chunk: int = 128,
    particle_phase: str | None = "NMC",
    thickness_phases: Sequence[str] = ("pore",),
    rev_phases: Sequence[str] = ("pore",),
    rev_axis: int = 0,
    rev_sizes: Sequence[int] | None = None,
    surface_sigma: float = SURFACE_SIGMA,
    cluster: str | None = None,
) -> dict[str, Any]:
    """Statistics of a label volume read chunk by chunk (see the module doc).

    Args:
        path: the label volume (z, y, x) on disk.
        class_names: phase names.
        label_values: the stored value of each phase (None: 0..n-1).
        voxel_size_nm: voxel edge (nm).
        dataset: HDF5 dataset.
        chunk: chunk side and slab thickness (voxels); at least the surfaces' halo.
        particle_phase: phase whose connected components are counted (None skips).
        thickness_phases: phases for local thickness ([] skips).
        rev_phases: phases (or unions ``A+B``) for the REV tortuosity curve ([] skips).
        rev_axis: the REV curve's flux axis.
        rev_sizes: its cube sides (None: see :func:`rev_tortuosity`).
        surface_sigma: Gaussian smoothing before marching cubes (voxels).
        cluster: a ``distributed`` scheduler address (None: threads).

    Returns:
        ``volume_fraction``, ``surfaces``, ``components`` (per particle phase: ``count``,
        ``volumes_um3``, ``d50_um``), ``local_thickness``, ``rev_tortuosity``, ``timings_s``,
        ``shape``, ``voxel_size_nm``, ``class_names``, ``chunk``.
    """
    import dask
    import dask.array as da

    class_names = list(class_names)
    n = len(class_names)
    halo = slab_halo(surface_sigma)
    if chunk < halo:
        raise ValueError(f"chunk={chunk} is smaller than the surfaces' halo of {halo} voxels "
                         f"(surface_sigma {surface_sigma}); use chunk >= {halo}")
    for what, names in (("thickness_phases", thickness_phases),
                        ("particle_phase", [particle_phase] if particle_phase else [])):
        for name in names:
            if name not in class_names:
                raise ValueError(f"{what}={name!r} is not one of class_names {class_names}")
    voxel_um = float(voxel_size_nm) * 1e-3
    raw = open_lazy(path, dataset, chunk)
    source = str(path)
    labels = raw.map_blocks(_as_phases, class_names, label_values, source, dtype=np.uint8)
    depth = labels.shape[0]
    timings: dict[str, float] = {}
    out: dict[str, Any] = {"shape": list(labels.shape), "voxel_size_nm": float(voxel_size_nm),
                           "class_names": class_names, "chunk": chunk, "source": source}

    def timed(key: str, fn: Any) -> Any:
        """Run ``fn()`` with a progress bar over its dask tasks (local schedulers); log its time."""
        from tqdm.dask import TqdmCallback

        start = time.perf_counter()
        with TqdmCallback(desc=key, unit="task", leave=False, disable=None):
            result = fn()
        timings[key] = time.perf_counter() - start
        log.info("%s: %.1f s", key, timings[key])
        return result

    with connect(cluster):
        counts = timed("volume_fraction", lambda: da.bincount(labels.ravel(), minlength=n).compute()[:n])
        total = float(counts.sum())
        out["volume_fraction"] = {name: float(counts[i] / total) for i, name in enumerate(class_names)}
        for i, name in enumerate(class_names):
            if counts[i] == 0:
                log.warning("phase %s is absent from %s: its surfaces, particles and tortuosity "
                            "are not defined", name, source)

        # a slab costs ~20 bytes a voxel while meshed (mask, float field, its smoothing, mesh):
        # thin slabs on wide planes, and one at a time when they are large, bound the peak
        plane = labels.shape[1] * labels.shape[2]
        slab = int(min(chunk, max(halo, SLAB_VOXELS // max(plane, 1))))
        serial = cluster is None and (slab + 2 * halo) * plane > SLAB_VOXELS // 2

        def surfaces() -> dict[str, Any]:
            parts = dask.compute(*[
                dask.delayed(_slab_surfaces)(labels[s0:s1], (z0 - s0 - 0.5, z1 - s0 - 0.5, z1 == depth),
                                             n, surface_sigma)
                for z0, z1, s0, s1 in _slabs(depth, slab, halo)],
                **({"scheduler": "synchronous"} if serial else {}))
            summed = [PhaseSurface(sum(p[i].area for p in parts), sum(p[i].to_phase for p in parts))
                      for i in range(n)]
            return surface_table(summed, counts, class_names, voxel_um)

        out["surfaces"] = timed("surfaces", surfaces)
        if particle_phase:
            out["components"] = {particle_phase: timed("components", lambda: _components(
                labels == class_names.index(particle_phase), voxel_um, chunk))}
        out["local_thickness"] = {}
        for name in thickness_phases:
            out["local_thickness"][name] = timed(f"local_thickness {name}", lambda name=name: _thickness(
                labels == class_names.index(name), voxel_um, serial=cluster is None))
    if rev_phases:
        out["rev_tortuosity"] = timed("rev_tortuosity", lambda: {
            name: rev_tortuosity(labels, [class_names.index(p) for p in name.split("+")], rev_axis, rev_sizes)
            for name in rev_phases})
    out["timings_s"] = timings
    return out


def _slab_surfaces(block: np.ndarray, window: tuple[float, float, bool], n: int,
                   sigma: float) -> list[PhaseSurface]:
    """Each phase's surface of one slab, inside its z ``window``."""
    return [phase_surface(np.asarray(block), i, n, sigma, window) for i in range(n)]


def _slab_components(block: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """6-connected components of one z-slab: (sizes (n,), first plane labels, last plane labels)."""
    labelled, n = ndimage.label(np.asarray(block), ndimage.generate_binary_structure(3, 1))
    sizes = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
    return sizes, labelled[0].copy(), labelled[-1].copy()


def _components(mask: Any, voxel_um: float, slab: int) -> dict[str, Any]:
    """Connected components (6-connectivity) of a lazy bool mask (z, y, x), exact across chunks.

    Each z-slab is labelled on its own, then the labels that touch across slab faces are joined
    (a graph's connected components); only the slabs' sizes and face planes are kept.
    """
    import dask
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    depth = mask.shape[0]
    parts = dask.compute(*[dask.delayed(_slab_components)(mask[z0:min(z0 + slab, depth)])
                           for z0 in range(0, depth, slab)])
    offsets = np.cumsum([0] + [p[0].size for p in parts])
    sizes = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
    rows, cols = [], []
    for k in range(len(parts) - 1):
        below, above = parts[k][2], parts[k + 1][1]
        touch = (below > 0) & (above > 0)
        pairs = np.unique(np.stack([below[touch] + offsets[k], above[touch] + offsets[k + 1]]), axis=1)
        rows.append(pairs[0] - 1)
        cols.append(pairs[1] - 1)
    total = int(offsets[-1])
    if rows:
        r, c = np.concatenate(rows), np.concatenate(cols)
    else:
        r = c = np.zeros(0, np.int64)
    graph = coo_matrix((np.ones(r.size, np.int8), (r, c)), shape=(total, total))
    count, component = connected_components(graph, directed=False) if total else (0, np.zeros(0, int))
    voxels = np.bincount(component, weights=sizes, minlength=count).astype(np.int64)
    diameters = (6.0 * voxels / np.pi) ** (1 / 3) * voxel_um
    d50 = float(weighted_quantiles(diameters, voxels, np.array([0.5]))[0])  # the in-memory rule
    return {"count": int(count), "voxels": voxels.tolist(), "volumes_um3": (voxels * voxel_um**3).tolist(),
            "d50_um": d50}


def _thickness(mask: Any, voxel_um: float, serial: bool = True) -> dict[str, Any]:
    """Local thickness (porespy, ``bf``) per block with an exact halo; mean and median (µm)."""
    import porespy

    # the largest inscribed radius bounds how far a sphere reaches: find it chunk-wise first,
    # with a halo that grows until the distance map stops changing
    halo = 8
    while True:
        dist = mask.map_overlap(lambda b: ndimage.distance_transform_edt(b).astype(np.float32),
                                depth=halo, boundary="none", dtype=np.float32)
        rmax = float(dist.max().compute())
        if rmax + 2 <= halo:
            break
        halo = int(math.ceil(rmax)) + 2
    reach = int(math.ceil(2 * rmax)) + 2  # a voxel is covered by spheres centred up to 2 r away

    def block_thickness(b: np.ndarray) -> np.ndarray:
        if not b.any():
            return np.zeros(b.shape, np.float32)
        return porespy.filters.local_thickness(b, method="bf").astype(np.float32)

    import dask

    radius = mask.map_overlap(block_thickness, depth=reach, boundary="none", dtype=np.float32)
    # porespy's radii take few distinct values: exact mean and median from their counts
    def block_counts(r: np.ndarray, m: np.ndarray) -> dict[float, int]:
        v, c = np.unique(r[m], return_counts=True)
        return dict(zip(v.tolist(), c.tolist(), strict=True))

    # one block at a time in this process: porespy parallelises each block with numba itself, and
    # numba's workqueue threading layer (set by the recon kernels) aborts on concurrent calls
    parts = dask.compute(*[dask.delayed(block_counts)(r, m) for r, m in zip(
        radius.to_delayed().ravel(), mask.rechunk(radius.chunks).to_delayed().ravel(), strict=True)],
        **({"scheduler": "synchronous"} if serial else {}))
    merged: dict[float, int] = {}
    for part in parts:
        for v, c in part.items():
            merged[v] = merged.get(v, 0) + c
    values = np.array(sorted(merged))
    counts = np.array([merged[v] for v in values.tolist()], np.int64)
    if not counts.size:
        return {"mean_um": math.nan, "d50_um": math.nan, "halo_voxels": reach}
    thickness = 2.0 * values.astype(np.float64) * voxel_um
    total = int(counts.sum())
    cumulative = np.cumsum(counts)
    median = 0.5 * sum(thickness[np.searchsorted(cumulative, k + 1)] for k in ((total - 1) // 2, total // 2))
    return {"mean_um": float(thickness @ counts / counts.sum()), "d50_um": float(median),
            "halo_voxels": reach}


def rev_tortuosity(
    labels: Any, members: Sequence[int], axis: int = 0, sizes: Sequence[int] | None = None,
    plateau: float = 0.05,
) -> dict[str, Any]:
    """Tortuosity factor on central cubes of growing side (the representative-volume curve).

    Args:
        labels: (z, y, x) phase indices (numpy or dask).
        members: the phase indices forming the conducting phase.
        axis: flux direction.
        sizes: cube sides (None: 32, 64, 128 up to the smallest volume side, at most 256 on the
            CPU: larger solves belong on a GPU).
        plateau: relative change of τ between the last two sizes below which the curve has
            reached its plateau.

    Returns:
        ``sizes``, ``tortuosity_factor`` (one per size), ``relative_change`` of the last step and
        ``plateau`` (bool).
    """
    shape = labels.shape
    side = min(shape)
    if sizes is None:
        sizes = sorted({s for s in (32, 64, 128, 256) if s < side} | {min(side, 256)})
    taus = []
    for s in sizes:
        if s > side:
            raise ValueError(f"rev size {s} is larger than the volume's smallest side {side}")
        lo = [(d - s) // 2 for d in shape]
        cube = np.asarray(labels[lo[0]:lo[0] + s, lo[1]:lo[1] + s, lo[2]:lo[2] + s])
        taus.append(float(tortuosity_factor(np.isin(cube, members), axis)["tortuosity_factor"]))
    change = abs(taus[-1] - taus[-2]) / taus[-1] if len(taus) > 1 and math.isfinite(taus[-1]) else math.nan
    return {"sizes": list(sizes), "tortuosity_factor": taus, "relative_change": change,
            "plateau": bool(change <= plateau)}
