"""Parallel-beam projection operators (the one forward model of the project).

Geometry follows tomopy:

* images are ``(H, W)`` slices of a volume ``(rows, H, W)``; pixel ``(i, j)`` has its centre at
  ``x = j + 0.5 - W/2``, ``y = i + 0.5 - H/2`` (pixel units, ``y`` pointing down the rows);
* projections are ``(angles, rows, n_det)`` in tomopy order, sinograms ``(B, angles, n_det)``;
* detector bin ``d`` covers ``t in [d - center, d + 1 - center]`` where ``center`` is the
  detector column of the rotation axis (default ``n_det / 2``), and a ray at angle ``theta``
  (radians) collects the points with ``t = x cos(theta) - y sin(theta)``.

The discretisation is *distance-driven* (De Man & Basu): the system-matrix weight between a
detector bin and a pixel is the overlap length, along the stepping axis, of the bin's footprint
with the pixel. Line integrals are in pixel units: the projection of a uniform disk of radius
``r`` at the centre is ``~ 2 sqrt(r^2 - t^2)``. The adjoint is the exact transpose (same sparse
weights), so the pair passes the dot-product test to rounding error.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["ParallelBeamProjector", "backproject", "project", "tomopy_detector_width"]

# Above this many bytes of sparse weights the tomopy-like helpers rebuild them per chunk.
CACHE_LIMIT_BYTES = 4 * 2**30

# Candidate entries (angles * n_det * steps * 3) built at once; bounds the build memory.
_BUILD_CANDIDATES = 1_500_000


def tomopy_detector_width(height: int, width: int) -> int:
    """Detector width tomopy's ``project(pad=True)`` uses: ``sqrt(H^2 + W^2) + 2`` rounded up to even."""
    return int(math.ceil((math.sqrt(height * height + width * width) + 2.0) / 2.0) * 2)


def _overlaps(
    e_lo: Tensor, e_hi: Tensor, n_cells: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Overlap of intervals ``[e_lo, e_hi]`` (length <= sqrt 2) with unit cells ``[k, k+1]``.

    Returns ``(cell, weight, valid)`` with a trailing axis of 3 candidate cells per interval.
    """
    first = torch.floor(e_lo)
    cell = first.unsqueeze(-1) + torch.arange(3, dtype=e_lo.dtype, device=e_lo.device)
    lo = torch.maximum(e_lo.unsqueeze(-1), cell)
    hi = torch.minimum(e_hi.unsqueeze(-1), cell + 1.0)
    weight = hi - lo
    valid = (weight > 1e-12) & (cell >= 0) & (cell < n_cells)
    return cell.long(), weight, valid


def _build_block(
    theta: Tensor, height: int, width: int, n_det: int, center: float
) -> tuple[Tensor, Tensor, Tensor]:
    """COO triplets ``(ray, pixel, weight)`` of the system matrix for a few angles (float64).

    Rays are numbered ``a * n_det + d`` (local angle index ``a``), pixels ``i * W + j``.
    """
    dev = theta.device
    f64 = torch.float64
    cos, sin = torch.cos(theta), torch.sin(theta)
    det = torch.arange(n_det, dtype=f64, device=dev) - center  # lower bin edge in t
    rays, pixels, weights = [], [], []
    row_step = cos.abs() >= sin.abs()
    for step_rows in (True, False):
        sel = torch.nonzero(row_step == step_rows).flatten()
        if sel.numel() == 0:
            continue
        c, s = cos[sel].view(-1, 1, 1), sin[sel].view(-1, 1, 1)
        t_lo, t_hi = det.view(1, -1, 1), det.view(1, -1, 1) + 1.0
        if step_rows:  # walk rows i, footprint along x (columns)
            y = (torch.arange(height, dtype=f64, device=dev) + 0.5 - height / 2).view(1, 1, -1)
            ea, eb = (t_lo + y * s) / c + width / 2, (t_hi + y * s) / c + width / 2
            n_cells, n_steps = width, height
        else:  # walk columns j, footprint along y (rows)
            x = (torch.arange(width, dtype=f64, device=dev) + 0.5 - width / 2).view(1, 1, -1)
            ea, eb = (x * c - t_lo) / s + height / 2, (x * c - t_hi) / s + height / 2
            n_cells, n_steps = height, width
        cell, w, valid = _overlaps(torch.minimum(ea, eb), torch.maximum(ea, eb), n_cells)
        keep = torch.nonzero(valid.flatten()).squeeze(1)  # flat (angle, det, step, cand)
        cell, w = cell.flatten()[keep], w.flatten()[keep]
        step = torch.div(keep, 3, rounding_mode="floor")
        ray_local = torch.div(step, n_steps, rounding_mode="floor")  # angle_in_sel * n_det + det
        step = step - ray_local * n_steps
        det_idx = ray_local % n_det
        ray = sel[torch.div(ray_local, n_det, rounding_mode="floor")] * n_det + det_idx
        rays.append(ray)
        pixels.append(step * width + cell if step_rows else cell * width + step)
        weights.append(w)
    return torch.cat(rays), torch.cat(pixels), torch.cat(weights)


def _csr(row: Tensor, col: Tensor, val: Tensor, n_rows: int, n_cols: int) -> Tensor:
    """CSR matrix from duplicate-free COO triplets (sorted here by row, then column)."""
    key = row * n_cols + col
    if key.device.type == "cpu":  # numpy's SIMD argsort is several times faster on CPU
        order = torch.from_numpy(np.argsort(key.numpy()))
    else:
        order = torch.argsort(key)
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=row.device)
    torch.cumsum(torch.bincount(row, minlength=n_rows), 0, out=crow[1:])
    col = col[order]
    if max(n_rows, n_cols, row.numel()) < 2**31 - 1:  # int32 indices: less memory, faster
        crow, col = crow.int(), col.int()
    with warnings.catch_warnings():  # "sparse CSR support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, val[order], (n_rows, n_cols),
                                       check_invariants=False)


def _at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 when it is float16/bfloat16 (differentiable cast), else unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class _Project(torch.autograd.Function):
    """Differentiable forward projection; its backward is the adjoint (and vice versa)."""

    @staticmethod
    def forward(ctx, image: Tensor, op: ParallelBeamProjector) -> Tensor:  # type: ignore[override]
        ctx.op = op
        with torch.autocast(image.device.type, enabled=False):  # autocast would cast addmm to half
            return op._apply_forward(image)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return _Backproject.apply(grad, ctx.op), None


class _Backproject(torch.autograd.Function):
    """Differentiable adjoint (backprojection); its backward is the forward projection."""

    @staticmethod
    def forward(ctx, sino: Tensor, op: ParallelBeamProjector) -> Tensor:  # type: ignore[override]
        ctx.op = op
        with torch.autocast(sino.device.type, enabled=False):
            return op._apply_adjoint(sino)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return _Project.apply(grad, ctx.op), None


class ParallelBeamProjector(torch.nn.Module):
    """Matched parallel-beam forward projector ``A`` and adjoint ``A^T`` for batches of slices.

    Args:
        image_shape: ``(H, W)`` of one slice, pixels.
        theta: projection angles, radians, shape ``(A,)``.
        n_det: detector columns (default ``W``).
        center: detector column of the rotation axis (default ``n_det / 2``, tomopy's).
        cache: keep the sparse weights per ``(dtype, device)`` (A and A^T in CSR, about
            ``2 x 8 bytes x 2.3 A n_det max(H, W)`` in float32, e.g. 190 MB for 192^2 pixels and
            181 angles); ``False`` rebuilds them chunk by chunk on every call (slower, memory
            bounded by one chunk, for large geometries).

    ``forward(image (B, H, W)) -> (B, A, n_det)`` and ``adjoint(sino (B, A, n_det)) -> (B, H, W)``
    follow the input's dtype and device and are differentiable.
    """

    def __init__(
        self,
        image_shape: tuple[int, int],
        theta: Sequence[float] | np.ndarray | Tensor,
        n_det: int | None = None,
        center: float | None = None,
        cache: bool = True,
    ) -> None:
        super().__init__()
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        if isinstance(theta, Tensor):
            th = theta.detach().cpu().double().flatten()
        else:
            th = torch.from_numpy(np.asarray(theta, dtype=np.float64).ravel().copy())
        if th.numel() == 0:
            raise ValueError("theta must contain at least one angle")
        self.theta: Tensor = th
        self.n_det = int(n_det) if n_det is not None else self.image_shape[1]
        self.center = float(center) if center is not None else self.n_det / 2.0
        self.cache = cache
        self._mats: dict[tuple[torch.dtype, str], list[tuple[slice, Tensor, Tensor]]] = {}

    @property
    def n_angles(self) -> int:
        """Number of projection angles ``A``."""
        return int(self.theta.numel())

    @property
    def sino_shape(self) -> tuple[int, int]:
        """``(A, n_det)`` of one sinogram."""
        return self.n_angles, self.n_det

    def extra_repr(self) -> str:
        return (f"image_shape={self.image_shape}, n_angles={self.n_angles}, "
                f"n_det={self.n_det}, center={self.center}")

    # ---------------------------------------------------------------- sparse weights
    def _angle_chunks(self) -> list[slice]:
        h, w = self.image_shape
        per_angle = self.n_det * max(h, w) * 3
        step = max(1, _BUILD_CANDIDATES // per_angle)
        return [slice(a, min(a + step, self.n_angles)) for a in range(0, self.n_angles, step)]

    def _block(self, sl: slice, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """CSR matrices ``(A_k, A_k^T)`` for the angles in ``sl``."""
        h, w = self.image_shape
        n_rays = (sl.stop - sl.start) * self.n_det
        ray, pix, val = _build_block(self.theta[sl].to(device), h, w, self.n_det, self.center)
        return (_csr(ray, pix, val.to(dtype), n_rays, h * w),
                _csr(pix, ray, val.to(dtype), h * w, n_rays))

    def _blocks(
        self, dtype: torch.dtype, device: torch.device
    ) -> Iterator[tuple[slice, Tensor, Tensor]]:
        """Yield ``(angle slice, A_k, A_k^T)``, from the cache when enabled."""
        key = (dtype, str(device))
        if key in self._mats:
            yield from self._mats[key]
            return
        built = []
        for sl in self._angle_chunks():
            fwd, adj = self._block(sl, dtype, device)
            if self.cache:
                built.append((sl, fwd, adj))
            yield sl, fwd, adj
        if self.cache:
            self._mats[key] = built

    def cache_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Estimated bytes of the cached weights (A and A^T in CSR) for ``dtype``."""
        h, w = self.image_shape
        nnz = 2.3 * self.n_angles * self.n_det * max(h, w)
        item = torch.empty((), dtype=dtype).element_size()
        return int(2 * nnz * (item + 4))

    def clear_cache(self) -> None:
        """Drop the cached sparse weights."""
        self._mats.clear()

    # ---------------------------------------------------------------- raw operators
    def _check(self, x: Tensor, shape: tuple[int, int], what: str) -> None:
        if x.dim() != 3 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"{what} must be (B, {shape[0]}, {shape[1]}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{what} must be a floating-point tensor, got {x.dtype}")

    def _apply_forward(self, image: Tensor) -> Tensor:
        self._check(image, self.image_shape, "image")
        b = image.shape[0]
        cols = image.reshape(b, -1).t().contiguous()  # (H*W, B)
        out = torch.empty(self.n_angles * self.n_det, b, dtype=image.dtype, device=image.device)
        for sl, fwd, _ in self._blocks(image.dtype, image.device):
            out[sl.start * self.n_det: sl.stop * self.n_det] = torch.sparse.mm(fwd, cols)
        return out.t().reshape(b, self.n_angles, self.n_det)

    def _apply_adjoint(self, sino: Tensor) -> Tensor:
        self._check(sino, self.sino_shape, "sinogram")
        b = sino.shape[0]
        rows = sino.reshape(b, -1).t().contiguous()  # (A*n_det, B)
        h, w = self.image_shape
        out = torch.zeros(h * w, b, dtype=sino.dtype, device=sino.device)
        for sl, _, adj in self._blocks(sino.dtype, sino.device):
            out += torch.sparse.mm(adj, rows[sl.start * self.n_det: sl.stop * self.n_det])
        return out.t().reshape(b, h, w)

    # ---------------------------------------------------------------- public API
    def forward(self, image: Tensor) -> Tensor:
        """Line integrals (pixel units) ``(B, A, n_det)`` of ``image`` ``(B, H, W)``.

        Half-precision input (e.g. under ``torch.autocast``) is projected in float32: the sparse
        kernels have no bfloat16/float16 version.
        """
        return _Project.apply(_at_least_float32(image), self)

    def adjoint(self, sino: Tensor) -> Tensor:
        """Exact transpose ``A^T`` (backprojection): ``(B, A, n_det) -> (B, H, W)``; float32 for
        half-precision input, as :meth:`forward`."""
        return _Backproject.apply(_at_least_float32(sino), self)


def project(
    obj: np.ndarray,
    theta: Sequence[float] | np.ndarray,
    center: float | None = None,
    n_det: int | None = None,
    pad: bool = True,
    chunk: int = 64,
) -> np.ndarray:
    """tomopy-like projection of a volume ``obj`` ``(rows, H, W)`` -> ``(angles, rows, n_det)``.

    ``n_det`` defaults to tomopy's padded width (:func:`tomopy_detector_width`) when ``pad``,
    else ``W``; ``center`` defaults to ``n_det / 2``. float32 output, line integrals in pixels.
    """
    obj = np.asarray(obj)
    if obj.ndim == 2:
        obj = obj[None]
    rows, h, w = obj.shape
    if n_det is None:
        n_det = tomopy_detector_width(h, w) if pad else w
    op = _as_projector((h, w), theta, n_det, center)
    out = np.empty((op.n_angles, rows, n_det), dtype=np.float32)
    with torch.no_grad():
        for z in range(0, rows, chunk):
            sl = torch.from_numpy(np.ascontiguousarray(obj[z:z + chunk], dtype=np.float32))
            out[:, z:z + chunk] = op(sl).numpy().transpose(1, 0, 2)
    return out


def _as_projector(
    image_shape: tuple[int, int], theta: Sequence[float] | np.ndarray, n_det: int,
    center: float | None,
) -> ParallelBeamProjector:
    """Projector for the numpy helpers; caches its weights only when they fit in memory."""
    op = ParallelBeamProjector(image_shape, theta, n_det=n_det, center=center)
    op.cache = op.cache_bytes() <= CACHE_LIMIT_BYTES
    return op


def backproject(
    tomo: np.ndarray,
    theta: Sequence[float] | np.ndarray,
    center: float | None = None,
    shape: tuple[int, int] | None = None,
    chunk: int = 64,
) -> np.ndarray:
    """Unfiltered backprojection ``A^T`` (the exact adjoint of :func:`project`), numpy in/out.

    Args:
        tomo: projections ``(angles, rows, n_det)`` (tomopy order) or one sinogram
            ``(angles, n_det)``.
        theta: angles, radians ``(angles,)``.
        center: detector column of the rotation axis (default ``n_det / 2``).
        shape: ``(H, W)`` of each slice (default ``(n_det, n_det)``).
        chunk: slices per batch.

    Returns:
        float32 ``(rows, H, W)`` (``(H, W)`` for a 2D input).
    """
    tomo = np.asarray(tomo)
    single = tomo.ndim == 2
    if single:
        tomo = tomo[:, None]
    if tomo.ndim != 3:
        raise ValueError(f"tomo must be (angles, rows, n_det), got shape {tomo.shape}")
    n_angles, rows, n_det = tomo.shape
    if np.size(theta) != n_angles:
        raise ValueError(f"theta has {np.size(theta)} angles, tomo has {n_angles} (axis 0)")
    h, w = shape if shape is not None else (n_det, n_det)
    op = _as_projector((h, w), theta, n_det, center)
    out = np.empty((rows, h, w), dtype=np.float32)
    with torch.no_grad():
        for z in range(0, rows, chunk):
            sino = np.ascontiguousarray(tomo[:, z:z + chunk].transpose(1, 0, 2), dtype=np.float32)
            out[z:z + chunk] = op.adjoint(torch.from_numpy(sino)).numpy()
    return out[0] if single else out
