"""External reconstruction backends used as cross-checks: ASTRA (2D CPU) and tomopy.

Both are optional: ``pip install batteryct[recon]`` brings ``astra-toolbox``; tomopy comes from
conda-forge. Functions raise :class:`ImportError` with an install hint when the package is absent.

Geometry mapping to ours (checked in ``tests/test_recon_backends.py``): ASTRA's 2D ``parallel``
geometry with ``create_vol_geom(H, W)`` and detector spacing 1 uses the same angle direction,
detector orientation and pixel grid as :class:`~src.recon.operators.ParallelBeamProjector`;
a rotation axis at detector column ``center`` is ASTRA's post-alignment shift
``n_det / 2 - center``. tomopy uses our conventions natively (it is where they come from).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "ASTRA_ALGORITHMS",
    "TOMOPY_ALGORITHMS",
    "astra_available",
    "astra_backproject",
    "astra_project",
    "astra_recon",
    "tomopy_available",
    "tomopy_recon",
]

ASTRA_ALGORITHMS = ("fbp", "sirt", "cgls")
TOMOPY_ALGORITHMS = ("fbp", "gridrec", "sirt", "tv", "art", "mlem")
_ASTRA_FILTERS = {"ramp": "ram-lak", "shepp-logan": "shepp-logan", "cosine": "cosine",
                  "hamming": "hamming", "hann": "hann"}
_TOMOPY_FILTERS = {"ramp": "ramlak", "shepp-logan": "shepp", "cosine": "cosine",
                   "hamming": "hamming", "hann": "hann"}


def astra_available() -> bool:
    """Whether ``import astra`` works."""
    try:
        import astra  # noqa: F401
    except Exception:  # noqa: BLE001 - broken CUDA libs raise other errors too
        return False
    return True


def tomopy_available() -> bool:
    """Whether ``import tomopy`` works."""
    try:
        import tomopy  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True


def _astra() -> Any:
    try:
        import astra
    except ImportError as err:
        raise ImportError("the ASTRA backend needs astra-toolbox: pip install astra-toolbox "
                          "(or pip install 'batteryct[recon]')") from err
    return astra


class _AstraGeometry:
    """ASTRA 2D volume/projection geometry and projector matching our conventions."""

    def __init__(self, image_shape: tuple[int, int], theta: Sequence[float] | np.ndarray,
                 n_det: int, center: float | None, projector_type: str = "linear") -> None:
        astra = _astra()
        self.astra = astra
        self.vol_geom = astra.create_vol_geom(int(image_shape[0]), int(image_shape[1]))
        angles = np.asarray(theta, dtype=np.float64).ravel()
        proj_geom = astra.create_proj_geom("parallel", 1.0, int(n_det), angles)
        if center is not None and center != n_det / 2:
            proj_geom = astra.geom_postalignment(proj_geom, n_det / 2 - float(center))
        self.proj_geom = proj_geom
        self.projector = astra.create_projector(projector_type, proj_geom, self.vol_geom)
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        self.sino_shape = (angles.size, int(n_det))

    def close(self) -> None:
        self.astra.projector.delete(self.projector)

    def __enter__(self) -> _AstraGeometry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def astra_project(
    images: np.ndarray, theta: Sequence[float] | np.ndarray, n_det: int | None = None,
    center: float | None = None, projector_type: str = "linear",
) -> np.ndarray:
    """ASTRA CPU forward projection of ``images`` ``(B, H, W)`` -> ``(B, A, n_det)`` float32."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 2:
        images = images[None]
    n_det = images.shape[-1] if n_det is None else int(n_det)
    with _AstraGeometry(images.shape[1:], theta, n_det, center, projector_type) as g:
        return _run_per_slice(g, "FP", images, forward=True)


def _run_per_slice(g: _AstraGeometry, algorithm: str, inputs: np.ndarray, forward: bool) -> np.ndarray:
    """Run ASTRA's ``FP`` (images → sinograms) or ``BP`` (sinograms → images) slice by slice."""
    astra = g.astra
    out = np.empty((inputs.shape[0], *(g.sino_shape if forward else g.image_shape)), dtype=np.float32)
    vol = astra.data2d.create("-vol", g.vol_geom)
    sino = astra.data2d.create("-sino", g.proj_geom)
    cfg = astra.astra_dict(algorithm)
    cfg.update({"ProjectorId": g.projector, "ProjectionDataId": sino,
                ("VolumeDataId" if forward else "ReconstructionDataId"): vol})
    alg = astra.algorithm.create(cfg)
    source, target = (vol, sino) if forward else (sino, vol)
    try:
        for b, x in enumerate(inputs):
            astra.data2d.store(source, x)
            astra.algorithm.run(alg)
            out[b] = astra.data2d.get_shared(target)
    finally:
        astra.algorithm.delete(alg)
        astra.data2d.delete([vol, sino])
    return out


def astra_backproject(
    sinos: np.ndarray, theta: Sequence[float] | np.ndarray, image_shape: tuple[int, int],
    center: float | None = None, projector_type: str = "linear",
) -> np.ndarray:
    """ASTRA CPU backprojection (adjoint) of ``sinos`` ``(B, A, n_det)`` -> ``(B, H, W)``."""
    sinos = np.asarray(sinos, dtype=np.float32)
    if sinos.ndim == 2:
        sinos = sinos[None]
    with _AstraGeometry(image_shape, theta, sinos.shape[-1], center, projector_type) as g:
        return _run_per_slice(g, "BP", sinos, forward=False)


def astra_recon(
    tomo: np.ndarray,
    theta: Sequence[float] | np.ndarray,
    center: float | None = None,
    algorithm: str = "fbp",
    num_iter: int | None = None,
    filter_name: str = "ramp",
    nonneg: bool = False,
    projector_type: str = "linear",
) -> np.ndarray:
    """ASTRA 2D CPU reconstruction, tomopy-shaped: ``(angles, rows, cols) -> (rows, cols, cols)``.

    ``algorithm`` in :data:`ASTRA_ALGORITHMS` (ASTRA's ``FBP``, ``SIRT``, ``CGLS``);
    ``num_iter`` defaults to 50 (SIRT) and 20 (CGLS). float32, values per pixel like ours.
    """
    astra = _astra()
    algorithm = algorithm.lower()
    if algorithm not in ASTRA_ALGORITHMS:
        raise ValueError(f"unknown ASTRA algorithm {algorithm!r}; available: {ASTRA_ALGORITHMS}")
    if filter_name not in _ASTRA_FILTERS:
        raise ValueError(f"unknown filter {filter_name!r}; choose one of {tuple(_ASTRA_FILTERS)}")
    tomo = np.asarray(tomo, dtype=np.float32)
    n_angles, rows, cols = tomo.shape
    n_iter = num_iter if num_iter is not None else (50 if algorithm == "sirt" else 20)
    out = np.empty((rows, cols, cols), dtype=np.float32)
    with _AstraGeometry((cols, cols), theta, cols, center, projector_type) as g:
        vol = astra.data2d.create("-vol", g.vol_geom, 0.0)
        sino = astra.data2d.create("-sino", g.proj_geom)
        cfg = astra.astra_dict(algorithm.upper())
        cfg.update(ProjectorId=g.projector, ReconstructionDataId=vol, ProjectionDataId=sino)
        if algorithm == "fbp":
            cfg["FilterType"] = _ASTRA_FILTERS[filter_name]
        elif algorithm == "sirt" and nonneg:
            cfg["option"] = {"MinConstraint": 0.0}
        alg = None
        try:
            for z in range(rows):
                astra.data2d.store(sino, np.ascontiguousarray(tomo[:, z]))
                astra.data2d.store(vol, 0.0)
                if alg is None or algorithm != "fbp":  # CGLS keeps its residuals: fresh per slice
                    if alg is not None:
                        astra.algorithm.delete(alg)
                    alg = astra.algorithm.create(cfg)
                astra.algorithm.run(alg, 1 if algorithm == "fbp" else n_iter)
                out[z] = astra.data2d.get_shared(vol)
        finally:
            if alg is not None:
                astra.algorithm.delete(alg)
            astra.data2d.delete([vol, sino])
    return out


def tomopy_recon(
    tomo: np.ndarray,
    theta: Sequence[float] | np.ndarray,
    center: float | None = None,
    algorithm: str = "fbp",
    num_iter: int | None = None,
    filter_name: str = "ramp",
    **kwargs: Any,
) -> np.ndarray:
    """Tomopy's ``recon`` with our names.

    ``fbp`` is tomopy's gridrec with the mapped filter, ``sirt``/``tv``/``art``/``mlem`` pass
    through (``num_iter`` default 50).
    """
    try:
        import tomopy
    except ImportError as err:
        raise ImportError("the tomopy backend needs tomopy, which is not on PyPI: "
                          "conda install -c conda-forge tomopy") from err
    algorithm = algorithm.lower()
    if algorithm not in TOMOPY_ALGORITHMS:
        raise ValueError(f"unknown tomopy algorithm {algorithm!r}; available: {TOMOPY_ALGORITHMS}")
    args: dict[str, Any] = dict(kwargs)
    if algorithm in ("fbp", "gridrec"):
        args["algorithm"] = "gridrec"
        args["filter_name"] = _TOMOPY_FILTERS.get(filter_name, filter_name)
    else:
        args["algorithm"] = algorithm
        args["num_iter"] = num_iter if num_iter is not None else 50
    theta = np.asarray(theta, dtype=np.float32)
    rec = tomopy.recon(np.asarray(tomo, dtype=np.float32), theta, center=center, **args)
    return np.asarray(rec, dtype=np.float32)
