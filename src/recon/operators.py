"""Parallel-beam projection operators (the one forward model of the project), matrix-free.

Geometry follows tomopy:

* images are ``(H, W)`` slices of a volume ``(rows, H, W)``; pixel ``(i, j)`` has its centre at
  ``x = j + 0.5 - W/2``, ``y = i + 0.5 - H/2`` (pixel units, ``y`` pointing down the rows);
* projections are ``(angles, rows, n_det)`` in tomopy order, sinograms ``(B, angles, n_det)``;
* detector bin ``d`` covers ``t in [d - center, d + 1 - center]`` (its centre at
  ``d + 0.5 - center``) where ``center`` is the detector column of the rotation axis (default
  ``n_det / 2``), and a ray at angle ``theta`` (radians) collects the points with
  ``t = x cos(theta) - y sin(theta)``.

The discretisation is *pixel-driven with linear interpolation*: pixel ``(i, j)`` at angle
``theta`` falls at the continuous bin index ``u = t + center - 0.5`` and is tied to bins
``floor(u)`` and ``floor(u) + 1`` with weights ``1 - frac(u)`` and ``frac(u)``. The adjoint
(backprojection) interpolates the sinogram linearly at ``u`` -- the classic FBP backprojector --
and the forward projector is its exact transpose (each pixel splats its value onto the two bins
with the same weights), so the pair passes the dot-product test to rounding error. The weights
of a pixel sum to one, so line integrals are in pixel units: the projection of a uniform disk of
radius ``r`` at the centre is ``~ 2 sqrt(r^2 - t^2)``.

Nothing is stored for real sizes: the weights are recomputed on the fly, so memory is the batch's
images and sinograms (plus, for the torch kernel, one angle chunk of sampling grid). Only small
geometries on CPU (at most :data:`CACHE_MAX_ENTRIES` weights, e.g. the learned nets' 64^2-128^2
slices) keep the same weights as CSR matrices, where that is measured faster. Two kernels compute
the same operator:

* ``"numba"`` (CPU, default when numba imports): compiled loops, parallel over slices x rows
  (backprojection) and slices x angles (projection), so no two threads write the same value;
* ``"torch"`` (any device, e.g. CUDA): ``grid_sample`` (linear interpolation along the detector)
  for the backprojection and its exact gradient ``grid_sampler_2d_backward`` for the projection,
  chunked over angles.
"""

from __future__ import annotations

import math
import os
import threading
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

__all__ = ["CACHE_MAX_ENTRIES", "KERNELS", "ParallelBeamProjector", "backproject", "numba_available", "project",
           "tomopy_detector_width"]

KERNELS = ("auto", "numba", "torch")

# torch kernel: elements (angles x slices x pixels) of one angle chunk's sampled values.
_CHUNK_ELEMENTS = 16 * 2**20

# cache=None (auto): store the weights as CSR matrices on CPU up to this many non-zeros of A
# (2 per angle and pixel; ~65 MB for A and A^T in float32). Measured with benchmarks/
# recon_operators.py --small (batch 8, one thread, as the learned nets train): a forward +
# adjoint pair takes 0.06x (64^2 x 30), 0.26x (128^2 x 60) and 0.31x (128^2 x 120) of the
# matrix-free time with the stored matrices, after a build of 0.3-5 s; worth it only for the
# thousands of calls of a training run, so only the learned nets ask for it (make_projector).
CACHE_MAX_ENTRIES = 4 * 2**20

try:  # the compiled CPU kernels (numba comes with the main dependencies)
    import numba

    # numba's own thread pool: its OpenMP layer would share GNU OpenMP's pool with torch, and
    # after a fork torch's next parallel op in the child would hang (calls are serialised below,
    # since this layer is not thread-safe). NUMBA_THREADING_LAYER in the environment wins.
    if "NUMBA_THREADING_LAYER" not in os.environ:
        numba.config.THREADING_LAYER = "workqueue"

    @numba.njit(inline="always")
    def _nb_interior(base, c, width, n_t):  # pragma: no cover - jit
        """``[lo, hi)`` of the columns ``j`` whose ``u = base + j c`` lies in ``[0, n_t - 1)``.

        That is, both neighbours on the detector; checked at its ends (``u`` is monotone in ``j``).
        """
        if abs(c) < 1e-9:
            lo, hi = 0, width
        else:
            j1 = (0.0 - base) / c
            j2 = (n_t - 1.0 - base) / c
            lo = max(0, int(math.ceil(min(j1, j2))) + 1)
            hi = min(width, int(math.floor(max(j1, j2))) - 1)
        while hi > lo:
            u_lo, u_hi = base + lo * c, base + (hi - 1) * c
            if min(u_lo, u_hi) >= 0.0 and max(u_lo, u_hi) < n_t - 1.0:
                return lo, hi
            if abs(c) < 1e-9:
                return 0, 0
            lo += 1
            hi -= 1
        return 0, 0

    @numba.njit(inline="always")
    def _nb_weight(v, inv_w):  # pragma: no cover - jit
        """Cell ``floor(v)`` and the weight of cell ``floor(v) + 1`` of a footprint.

        The footprint's left edge is ``v`` (cell coordinates) and its width is ``1 / inv_w`` (<= 1).
        """
        fk = math.floor(v)
        wr = 1.0 + (v - fk - 1.0) * inv_w
        return int(fk), (wr if wr > 0.0 else 0.0)

    @numba.njit(inline="always")
    def _nb_weight(v, inv_w):  # pragma: no cover - jit
        """Cell ``floor(v)`` and the weight of cell ``floor(v) + 1`` of a footprint.

        The footprint's left edge is ``v`` (cell coordinates) and its width is ``1 / inv_w`` (<= 1).
        """
        fk = math.floor(v)
        wr = 1.0 + (v - fk - 1.0) * inv_w
        return int(fk), (wr if wr > 0.0 else 0.0)

    @numba.njit(inline="always")
    def _nb_bp_edge(row, sa, j, v, inv_w, n_t, n_b):  # pragma: no cover - jit
        """Backprojection of column ``j`` when a bin may be off the detector."""
        k, wr = _nb_weight(v, inv_w)
        if 0 <= k < n_t:
            for b in range(n_b):
                row[j, b] += (1.0 - wr) * sa[k, b]
        if 0 <= k + 1 < n_t:
            for b in range(n_b):
                row[j, b] += wr * sa[k + 1, b]

    @numba.njit(inline="always")
    def _nb_fp_edge(oa, irow, j, v, inv_w, n_t, n_b):  # pragma: no cover - jit
        """Projection of column ``j`` when a bin may be off the detector."""
        k, wr = _nb_weight(v, inv_w)
        if 0 <= k < n_t:
            for b in range(n_b):
                oa[k, b] += (1.0 - wr) * irow[j, b]
        if 0 <= k + 1 < n_t:
            for b in range(n_b):
                oa[k + 1, b] += wr * irow[j, b]

    # Layouts with the slice batch last: sinograms (A, T, B), images (H, W, B). The weights
    # depend on (angle, pixel) only, so they are computed once and used for the B slices.

    @numba.njit(inline="always")
    def _nb_bp_row(row, sa, base, c, inv_w, width, n_t, n_b):  # pragma: no cover - jit
        """Add the backprojection of one angle's detector row ``sa`` (T, B) to ``row`` (W, B)."""
        lo, hi = _nb_interior(base, c, width, n_t)
        for j in range(lo, hi):  # both bins on the detector, v >= 0: int() is floor()
            v = base + j * c
            k = int(v)
            wr = 1.0 + (v - k - 1.0) * inv_w
            if wr < 0.0:
                wr = 0.0
            if n_b == 1:
                row[j, 0] += sa[k, 0] + wr * (sa[k + 1, 0] - sa[k, 0])
            else:
                wl = 1.0 - wr
                for b in range(n_b):
                    row[j, b] += wl * sa[k, b] + wr * sa[k + 1, b]
        for j in range(0, lo if hi > lo else width):  # a bin may be off the detector
            _nb_bp_edge(row, sa, j, base + j * c, inv_w, n_t, n_b)
        for j in range(hi if hi > lo else width, width):
            _nb_bp_edge(row, sa, j, base + j * c, inv_w, n_t, n_b)

    @numba.njit(inline="always")
    def _nb_fp_row(oa, irow, base, c, inv_w, width, n_t, n_b):  # pragma: no cover - jit
        """Add the projection of one image row ``irow`` (W, B) to one angle's ``oa`` (T, B)."""
        lo, hi = _nb_interior(base, c, width, n_t)
        for j in range(lo, hi):
            v = base + j * c
            k = int(v)
            wr = 1.0 + (v - k - 1.0) * inv_w
            if wr < 0.0:
                wr = 0.0
            if n_b == 1:
                val = irow[j, 0]
                oa[k, 0] += val - wr * val
                oa[k + 1, 0] += wr * val
            else:
                wl = 1.0 - wr
                for b in range(n_b):
                    val = irow[j, b]
                    oa[k, b] += wl * val
                    oa[k + 1, b] += wr * val
        for j in range(0, lo if hi > lo else width):
            _nb_fp_edge(oa, irow, j, base + j * c, inv_w, n_t, n_b)
        for j in range(hi if hi > lo else width, width):
            _nb_fp_edge(oa, irow, j, base + j * c, inv_w, n_t, n_b)

    # Tiling: a thread takes a block of image rows (backprojection) or of angles (projection)
    # so that a detector row / image row is reused from cache for the whole block.

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _nb_backproject(sino, cos, sin, center, height, width, out, rows_per_block):  # pragma: no cover - jit
        n_a, n_t, n_b = sino.shape
        x0 = 0.5 - width / 2.0
        n_blocks = (height + rows_per_block - 1) // rows_per_block
        for blk in numba.prange(n_blocks):
            i0 = blk * rows_per_block
            i1 = min(height, i0 + rows_per_block)
            for a in range(n_a):
                c = cos[a]
                s = sin[a]
                fw = max(abs(c), abs(s))
                inv_w = 1.0 / fw
                sa = sino[a]  # (T, B)
                for i in range(i0, i1):
                    # the footprint's left edge (cell coordinates) at column j = 0
                    base = center - (i + 0.5 - height / 2.0) * s + x0 * c - 0.5 * fw
                    _nb_bp_row(out[i], sa, base, c, inv_w, width, n_t, n_b)

    @numba.njit(parallel=True, cache=True, nogil=True)
    def _nb_project(img, cos, sin, center, out, angles_per_block):  # pragma: no cover - jit
        height, width, n_b = img.shape
        n_a, n_t, _ = out.shape
        x0 = 0.5 - width / 2.0
        n_blocks = (n_a + angles_per_block - 1) // angles_per_block
        for blk in numba.prange(n_blocks):
            a0 = blk * angles_per_block
            a1 = min(n_a, a0 + angles_per_block)
            for i in range(height):
                irow = img[i]  # (W, B)
                y = i + 0.5 - height / 2.0
                for a in range(a0, a1):
                    c = cos[a]
                    s = sin[a]
                    fw = max(abs(c), abs(s))
                    base = center - y * s + x0 * c - 0.5 * fw
                    _nb_fp_row(out[a], irow, base, c, 1.0 / fw, width, n_t, n_b)

    _HAS_NUMBA = True
except ImportError:  # pragma: no cover - numba is a dependency; the torch kernel still works
    _HAS_NUMBA = False


# Calls into numba's parallel kernels are serialised: its workqueue layer is not thread-safe.
_NUMBA_LOCK = threading.Lock()


def numba_available() -> bool:
    """Whether the compiled CPU kernels can be used."""
    return _HAS_NUMBA


def tomopy_detector_width(height: int, width: int) -> int:
    """Detector width tomopy's ``project(pad=True)`` uses: ``sqrt(H^2 + W^2) + 2`` rounded up to even."""
    return int(math.ceil((math.sqrt(height * height + width * width) + 2.0) / 2.0) * 2)


def _int32_csr(m: Tensor) -> Tensor:
    """The CSR matrix ``m`` with int32 indices (less memory, faster products)."""
    if max(m.shape[0], m.shape[1], m.values().numel()) >= 2**31 - 1:
        return m
    return torch.sparse_csr_tensor(m.crow_indices().int(), m.col_indices().int(), m.values(),
                                   m.shape, check_invariants=False)


def _at_least_float32(x: Tensor) -> Tensor:
    """``x`` in float32 when it is float16/bfloat16 (differentiable cast), else unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class _Project(torch.autograd.Function):
    """Differentiable forward projection; its backward is the adjoint (and vice versa)."""

    @staticmethod
    def forward(ctx, image: Tensor, op: ParallelBeamProjector) -> Tensor:  # type: ignore[override]
        ctx.op = op
        with torch.autocast(image.device.type, enabled=False):
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

    Matrix-free (see the module docstring): memory is ``O(batch x (image + sinogram))``.

    Args:
        image_shape: ``(H, W)`` of one slice, pixels.
        theta: projection angles, radians, shape ``(A,)``.
        n_det: detector columns (default ``W``).
        center: detector column of the rotation axis (default ``n_det / 2``, tomopy's).
        kernel: ``"auto"`` (numba on CPU when available, else torch), ``"numba"`` or ``"torch"``.
        cache: store the same weights as sparse CSR matrices ``A`` and ``A^T`` (built on first
            use, per dtype and device): ``False`` (default) never, ``None`` on CPU for small
            geometries only (:data:`CACHE_MAX_ENTRIES`, where it is measured faster once built:
            for many calls, e.g. training a learned net), ``True`` always.

    ``forward(image (B, H, W)) -> (B, A, n_det)`` and ``adjoint(sino (B, A, n_det)) -> (B, H, W)``
    follow the input's dtype and device and are differentiable.
    """

    def __init__(
        self,
        image_shape: tuple[int, int],
        theta: Sequence[float] | np.ndarray | Tensor,
        n_det: int | None = None,
        center: float | None = None,
        kernel: str = "auto",
        cache: bool | None = False,
    ) -> None:
        super().__init__()
        self.cache = cache
        self._mats: dict[tuple[torch.dtype, str], tuple[Tensor, Tensor]] = {}
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        if isinstance(theta, Tensor):
            th = theta.detach().cpu().double().flatten()
        else:
            th = torch.from_numpy(np.asarray(theta, dtype=np.float64).ravel().copy())
        if th.numel() == 0:
            raise ValueError("theta must contain at least one angle")
        if kernel not in KERNELS:
            raise ValueError(f"unknown kernel {kernel!r}; choose one of {KERNELS}")
        if kernel == "numba" and not _HAS_NUMBA:
            raise ImportError("kernel='numba' needs numba (pip install numba)")
        self.theta: Tensor = th
        self.n_det = int(n_det) if n_det is not None else self.image_shape[1]
        self.center = float(center) if center is not None else self.n_det / 2.0
        self.kernel = kernel
        self._cos = np.cos(th.numpy())
        self._sin = np.sin(th.numpy())

    @property
    def n_angles(self) -> int:
        """Number of projection angles ``A``."""
        return int(self.theta.numel())

    @property
    def sino_shape(self) -> tuple[int, int]:
        """``(A, n_det)`` of one sinogram."""
        return self.n_angles, self.n_det

    def extra_repr(self) -> str:
        """Shapes, centre, kernel and cache of the operator, for the module's repr."""
        return (f"image_shape={self.image_shape}, n_angles={self.n_angles}, "
                f"n_det={self.n_det}, center={self.center}, kernel={self.kernel}, "
                f"cache={self.cache}")

    def kernel_for(self, device: torch.device | str) -> str:
        """The kernel used for tensors on ``device``."""
        if self.kernel != "auto":
            return self.kernel
        return "numba" if numba_available() and torch.device(device).type == "cpu" else "torch"

    # ---------------------------------------------------------------- torch kernel
    def _weights(self, a0: int, a1: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """For angles ``a0:a1`` and every pixel: the first bin and the weight of the next bin.

        The first bin is ``(a, H, W)`` (float64); the first bin's weight is one minus the next
        one's.
        """
        h, w = self.image_shape
        f64 = torch.float64
        c = torch.from_numpy(self._cos[a0:a1]).to(device)
        s = torch.from_numpy(self._sin[a0:a1]).to(device)
        x = torch.arange(w, dtype=f64, device=device) + 0.5 - w / 2
        y = torch.arange(h, dtype=f64, device=device) + 0.5 - h / 2
        fw = torch.maximum(c.abs(), s.abs())  # footprint width on the detector (<= 1 bin)
        left = (x[None, :] * c[:, None] + (self.center - 0.5 * fw)[:, None])[:, None, :] \
            - (y[None, :] * s[:, None])[:, :, None]  # (a, H, W): left edge, cell coordinates
        cell = torch.floor(left)
        right = (1.0 + (left - cell - 1.0) / fw[:, None, None]).clamp_(min=0.0)
        return cell, right

    def _grid(self, a0: int, a1: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """``grid_sample`` grid ``(a1 - a0, 1, H W, 2)``: normalised bin position of each pixel."""
        h, w = self.image_shape
        cell, right = self._weights(a0, a1, device)
        # linear interpolation at cell + right puts 1 - right on `cell`, right on `cell + 1`;
        # align_corners=False: normalised g samples index ((g + 1) T - 1) / 2
        pos = (cell + right).mul_(2.0 / self.n_det).add_(1.0 / self.n_det - 1.0)
        grid = torch.zeros(a1 - a0, 1, h * w, 2, dtype=dtype, device=device)
        grid[:, 0, :, 0] = pos.reshape(a1 - a0, h * w)
        return grid

    # ---------------------------------------------------------------- optional stored weights
    def cache_entries(self) -> int:
        """Non-zeros of the stored matrix ``A`` (two per angle and pixel)."""
        return 2 * self.n_angles * self.image_shape[0] * self.image_shape[1]

    def uses_cache(self, device: torch.device | str) -> bool:
        """Whether the stored weights serve tensors on ``device`` (see ``cache``)."""
        if self.cache is None:
            return torch.device(device).type == "cpu" and self.cache_entries() <= CACHE_MAX_ENTRIES
        return bool(self.cache)

    def _matrices(self, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """``A`` and ``A^T`` as CSR, built once per ``(dtype, device)`` from the same weights."""
        key = (dtype, str(device))
        if key not in self._mats:
            import warnings

            h, w = self.image_shape
            cell, right = self._weights(0, self.n_angles, device)
            a = torch.arange(self.n_angles, device=device).view(-1, 1, 1).expand_as(cell)
            pix = torch.arange(h * w, device=device).view(1, h, w).expand_as(cell)
            k = cell.long()
            rows = torch.cat([(a * self.n_det + k).flatten(), (a * self.n_det + k + 1).flatten()])
            cols = torch.cat([pix.flatten(), pix.flatten()])
            vals = torch.cat([(1.0 - right).flatten(), right.flatten()])
            keep = torch.cat([((k >= 0) & (k < self.n_det)).flatten(),
                              ((k + 1 >= 0) & (k + 1 < self.n_det)).flatten()]) & (vals > 0)
            rows, cols, vals = rows[keep], cols[keep], vals[keep].to(dtype)
            shape = (self.n_angles * self.n_det, h * w)
            with warnings.catch_warnings():  # "sparse CSR support is in beta state"
                warnings.simplefilter("ignore", UserWarning)
                fwd = torch.sparse_coo_tensor(torch.stack([rows, cols]), vals, shape).coalesce()
                adj = torch.sparse_coo_tensor(torch.stack([cols, rows]), vals, shape[::-1]).coalesce()
                self._mats[key] = tuple(_int32_csr(m.to_sparse_csr()) for m in (fwd, adj))
        return self._mats[key]

    def clear_cache(self) -> None:
        """Drop the stored weights (they are rebuilt on the next call that uses them)."""
        self._mats.clear()

    def _angle_step(self, batch: int) -> int:
        h, w = self.image_shape
        return max(1, min(self.n_angles, _CHUNK_ELEMENTS // max(1, batch * h * w)))

    def _torch_adjoint(self, sino: Tensor) -> Tensor:
        import torch.nn.functional as F

        b = sino.shape[0]
        h, w = self.image_shape
        per_angle = sino.permute(1, 0, 2).unsqueeze(2)  # (A, B, 1, T)
        out = torch.zeros(b, h * w, dtype=sino.dtype, device=sino.device)
        step = self._angle_step(b)
        for a0 in range(0, self.n_angles, step):
            a1 = min(a0 + step, self.n_angles)
            grid = self._grid(a0, a1, sino.dtype, sino.device)
            val = F.grid_sample(per_angle[a0:a1], grid, mode="bilinear", padding_mode="zeros",
                                align_corners=False)  # (a, B, 1, H W)
            out += val.sum(0)[:, 0]
        return out.reshape(b, h, w)

    def _torch_forward(self, image: Tensor) -> Tensor:
        b = image.shape[0]
        h, w = self.image_shape
        out = torch.empty(self.n_angles, b, 1, self.n_det, dtype=image.dtype, device=image.device)
        flat = image.reshape(1, b, 1, h * w)
        step = self._angle_step(b)
        for a0 in range(0, self.n_angles, step):
            a1 = min(a0 + step, self.n_angles)
            grid = self._grid(a0, a1, image.dtype, image.device)
            grad_out = flat.expand(a1 - a0, b, 1, h * w).contiguous()
            out[a0:a1] = torch.ops.aten.grid_sampler_2d_backward(
                grad_out, out[a0:a1], grid, 0, 0, False, [True, False])[0]
        return out[:, :, 0].permute(1, 0, 2).contiguous()

    # ---------------------------------------------------------------- numba kernel
    @staticmethod
    def _numba_threads() -> None:
        want = max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))
        if numba.get_num_threads() != want:
            numba.set_num_threads(want)

    @staticmethod
    def _block(n: int, row_bytes: int) -> int:
        """Rows (or angles) per thread block: ~256 KiB of output rows, >= 4 blocks a thread."""
        per_cache = max(1, (256 * 1024) // max(1, row_bytes))
        per_balance = max(1, n // (4 * max(1, numba.get_num_threads())))
        return int(min(16, per_cache, per_balance))

    def _numba_adjoint(self, sino: Tensor) -> Tensor:
        self._numba_threads()
        s = np.ascontiguousarray(sino.detach().numpy().transpose(1, 2, 0))  # (A, T, B)
        h, w = self.image_shape
        out = np.zeros((h, w, s.shape[2]), dtype=s.dtype)
        with _NUMBA_LOCK:
            _nb_backproject(s, self._cos, self._sin, self.center, h, w, out,
                            self._block(h, w * s.shape[2] * s.itemsize))
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))

    def _numba_forward(self, image: Tensor) -> Tensor:
        self._numba_threads()
        x = np.ascontiguousarray(image.detach().numpy().transpose(1, 2, 0))  # (H, W, B)
        out = np.zeros((self.n_angles, self.n_det, x.shape[2]), dtype=x.dtype)
        with _NUMBA_LOCK:
            _nb_project(x, self._cos, self._sin, self.center, out,
                        self._block(self.n_angles, self.n_det * x.shape[2] * x.itemsize))
        return torch.from_numpy(np.ascontiguousarray(out.transpose(2, 0, 1)))

    # ---------------------------------------------------------------- raw operators
    def _check(self, x: Tensor, shape: tuple[int, int], what: str) -> None:
        if x.dim() != 3 or tuple(x.shape[1:]) != shape:
            raise ValueError(f"{what} must be (B, {shape[0]}, {shape[1]}), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"{what} must be a floating-point tensor, got {x.dtype}")

    def _apply_forward(self, image: Tensor) -> Tensor:
        self._check(image, self.image_shape, "image")
        if self.uses_cache(image.device):
            fwd, _ = self._matrices(image.dtype, image.device)
            b = image.shape[0]
            out = torch.sparse.mm(fwd, image.reshape(b, -1).t().contiguous())
            return out.t().reshape(b, self.n_angles, self.n_det).contiguous()
        if self.kernel_for(image.device) == "numba" and image.device.type == "cpu":
            return self._numba_forward(image)
        return self._torch_forward(image.contiguous())

    def _apply_adjoint(self, sino: Tensor) -> Tensor:
        self._check(sino, self.sino_shape, "sinogram")
        if self.uses_cache(sino.device):
            _, adj = self._matrices(sino.dtype, sino.device)
            b = sino.shape[0]
            out = torch.sparse.mm(adj, sino.reshape(b, -1).t().contiguous())
            return out.t().reshape(b, *self.image_shape).contiguous()
        if self.kernel_for(sino.device) == "numba" and sino.device.type == "cpu":
            return self._numba_adjoint(sino)
        return self._torch_adjoint(sino.contiguous())

    # ---------------------------------------------------------------- public API
    def forward(self, image: Tensor) -> Tensor:
        """Line integrals (pixel units) ``(B, A, n_det)`` of ``image`` ``(B, H, W)``.

        Half-precision input (e.g. under ``torch.autocast``) is projected in float32.
        """
        return _Project.apply(_at_least_float32(image), self)

    def adjoint(self, sino: Tensor) -> Tensor:
        """Exact transpose ``A^T`` (backprojection): ``(B, A, n_det) -> (B, H, W)``.

        float32 for half-precision input, as :meth:`forward`.
        """
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
    op = ParallelBeamProjector((h, w), theta, n_det=n_det, center=center)
    out = np.empty((op.n_angles, rows, n_det), dtype=np.float32)
    with torch.no_grad():
        for z in range(0, rows, chunk):
            sl = torch.from_numpy(np.ascontiguousarray(obj[z:z + chunk], dtype=np.float32))
            out[:, z:z + chunk] = op(sl).numpy().transpose(1, 0, 2)
    return out


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
    op = ParallelBeamProjector((h, w), theta, n_det=n_det, center=center)
    out = np.empty((rows, h, w), dtype=np.float32)
    with torch.no_grad():
        for z in range(0, rows, chunk):
            sino = np.ascontiguousarray(tomo[:, z:z + chunk].transpose(1, 0, 2), dtype=np.float32)
            out[z:z + chunk] = op.adjoint(torch.from_numpy(sino)).numpy()
    return out[0] if single else out
