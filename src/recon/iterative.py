"""Iterative reconstruction on the project's parallel-beam operator, batched over slices.

All solvers take sinograms ``(B, A, n_det)`` (line integrals in pixel units, as produced by
:class:`~src.recon.operators.ParallelBeamProjector`) and return images ``(B, H, W)`` in the same
units per pixel (attenuation per voxel), on the sinogram's dtype and device. They run under
``torch.no_grad()``: they are solvers, not layers (learned unrolled networks call the operator
directly).

* :func:`sirt` -- simultaneous iterative reconstruction (Gregor & Benson's row/column-sum
  preconditioned Landweber), ``x <- x + C A^T R (b - A x)``.
* :func:`cgls` -- conjugate gradients on the normal equations ``A^T A x = A^T b``.
* :func:`tv_pdhg` -- Chambolle & Pock's primal-dual algorithm for
  ``min_x 1/2 ||A x - b||^2 + lam ||grad x||_{2,1}`` (isotropic TV), optionally with ``x >= 0``;
  step sizes from a power-iteration estimate of ``||[A; grad]||``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from src.recon.operators import ParallelBeamProjector

__all__ = ["cgls", "gradient", "divergence", "operator_norm", "sirt", "tv_pdhg"]

Callback = Callable[[int, Tensor], None]


def gradient(x: Tensor) -> Tensor:
    """Forward-difference gradient (Neumann boundary) ``(B, H, W) -> (B, 2, H, W)`` (d/dy, d/dx)."""
    g = torch.zeros(x.shape[0], 2, *x.shape[1:], dtype=x.dtype, device=x.device)
    g[:, 0, :-1] = x[:, 1:] - x[:, :-1]
    g[:, 1, :, :-1] = x[:, :, 1:] - x[:, :, :-1]
    return g


def divergence(g: Tensor) -> Tensor:
    """Negative adjoint of :func:`gradient`: ``(B, 2, H, W) -> (B, H, W)``, ``<grad x, g> = -<x, div g>``."""
    gy, gx = g[:, 0], g[:, 1]
    d = torch.zeros_like(gy)
    d[:, :-1] += gy[:, :-1]
    d[:, 1:] -= gy[:, :-1]
    d[:, :, :-1] += gx[:, :, :-1]
    d[:, :, 1:] -= gx[:, :, :-1]
    return d


def _check_sino(sino: Tensor, projector: ParallelBeamProjector) -> Tensor:
    if sino.dim() == 2:
        sino = sino[None]
    if sino.dim() != 3 or tuple(sino.shape[1:]) != projector.sino_shape:
        raise ValueError(f"sinogram must be (B, {projector.n_angles}, {projector.n_det}), "
                         f"got {tuple(sino.shape)}")
    if not sino.is_floating_point():
        sino = sino.float()
    return sino


def _start(x0: Tensor | None, sino: Tensor, projector: ParallelBeamProjector) -> Tensor:
    shape = (sino.shape[0], *projector.image_shape)
    if x0 is None:
        return torch.zeros(shape, dtype=sino.dtype, device=sino.device)
    if tuple(x0.shape) != shape:
        raise ValueError(f"x0 must be {shape}, got {tuple(x0.shape)}")
    return x0.to(dtype=sino.dtype, device=sino.device).clone()


@torch.no_grad()
def operator_norm(
    projector: ParallelBeamProjector,
    with_gradient: bool = False,
    n_iter: int = 30,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    seed: int = 0,
) -> float:
    """Spectral norm ``||A||`` (or ``||[A; grad]||``) by power iteration on the normal operator.

    A slight over-estimate is safe for step sizes; callers multiply by ~1.01.
    """
    gen = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.rand(1, *projector.image_shape, generator=gen, dtype=dtype).to(device)
    lam = 0.0
    for _ in range(n_iter):
        x = x / torch.linalg.vector_norm(x)
        y = projector.adjoint(projector(x))
        if with_gradient:
            y = y - divergence(gradient(x))
        lam = float(torch.linalg.vector_norm(y))
        x = y
    return lam**0.5


def _safe_divide(num: Tensor | float, den: Tensor, eps: float) -> Tensor:
    """``num / den`` where ``den > eps``, 0 elsewhere (empty rays/pixels, converged CG)."""
    return torch.where(den > eps, num / den.clamp_min(eps), torch.zeros_like(den))


@torch.no_grad()
def sirt(
    sino: Tensor,
    projector: ParallelBeamProjector,
    n_iter: int = 50,
    x0: Tensor | None = None,
    nonneg: bool = False,
    relaxation: float = 1.0,
    callback: Callback | None = None,
) -> Tensor:
    """SIRT: ``x <- x + relaxation * C A^T R (b - A x)``, ``R = 1/(A 1)``, ``C = 1/(A^T 1)``.

    Args:
        sino: ``(B, A, n_det)`` or ``(A, n_det)`` line integrals.
        projector: the geometry.
        n_iter: iterations.
        x0: start ``(B, H, W)`` (default zeros).
        nonneg: clamp to ``x >= 0`` after every step.
        relaxation: step factor in ``(0, 2)``.
        callback: called as ``callback(k, x)`` after iteration ``k``.

    Returns:
        ``(B, H, W)`` image.
    """
    sino = _check_sino(sino, projector)
    x = _start(x0, sino, projector)
    one_img = torch.ones(1, *projector.image_shape, dtype=sino.dtype, device=sino.device)
    row = projector(one_img)
    col = projector.adjoint(torch.ones_like(row))
    r = _safe_divide(1.0, row, 1e-8)
    c = _safe_divide(relaxation, col, 1e-8)
    for k in range(n_iter):
        x = x + c * projector.adjoint(r * (sino - projector(x)))
        if nonneg:
            x.clamp_(min=0)
        if callback is not None:
            callback(k, x)
    return x


@torch.no_grad()
def cgls(
    sino: Tensor,
    projector: ParallelBeamProjector,
    n_iter: int = 20,
    x0: Tensor | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """CGLS (Hestenes--Stiefel on ``A^T A x = A^T b``), one independent run per slice.

    Early stopping (``n_iter``) is the regulariser. Returns ``(B, H, W)``.
    """
    sino = _check_sino(sino, projector)
    x = _start(x0, sino, projector)
    b = sino.shape[0]
    r = sino - projector(x) if x0 is not None else sino.clone()
    s = projector.adjoint(r)
    p = s.clone()
    gamma = (s * s).reshape(b, -1).sum(1)
    tiny = torch.finfo(sino.dtype).tiny
    for k in range(n_iter):
        q = projector(p)
        qq = (q * q).reshape(b, -1).sum(1)
        alpha = _safe_divide(gamma, qq, tiny)
        x = x + alpha.view(b, 1, 1) * p
        r = r - alpha.view(b, 1, 1) * q
        s = projector.adjoint(r)
        gamma_new = (s * s).reshape(b, -1).sum(1)
        beta = _safe_divide(gamma_new, gamma, tiny)
        p = s + beta.view(b, 1, 1) * p
        gamma = gamma_new
        if callback is not None:
            callback(k, x)
    return x


@torch.no_grad()
def tv_pdhg(
    sino: Tensor,
    projector: ParallelBeamProjector,
    lam: float = 0.01,
    n_iter: int = 200,
    x0: Tensor | None = None,
    nonneg: bool = True,
    norm: float | None = None,
    callback: Callback | None = None,
) -> Tensor:
    """TV-regularised least squares by Chambolle--Pock (PDHG), isotropic TV.

    Solves ``min_x 1/2 ||A x - b||^2 + lam * sum |grad x|_2`` (``+ i(x >= 0)`` if ``nonneg``)
    with ``K = [A; grad]``, ``sigma = tau = 1 / ||K||`` and over-relaxation ``theta = 1``.

    Args:
        sino: ``(B, A, n_det)`` line integrals.
        projector: the geometry.
        lam: TV weight, in image units per pixel (scale with the image's value range).
        n_iter: iterations.
        x0: start ``(B, H, W)`` (default zeros).
        nonneg: enforce ``x >= 0``.
        norm: ``||K||`` if known (else estimated by :func:`operator_norm`).
        callback: ``callback(k, x)`` after iteration ``k``.

    Returns:
        ``(B, H, W)`` image.
    """
    sino = _check_sino(sino, projector)
    x = _start(x0, sino, projector)
    if norm is None:
        norm = operator_norm(projector, with_gradient=True, device=sino.device) * 1.01
    sigma = tau = 1.0 / norm
    x_bar = x.clone()
    p = torch.zeros_like(sino)  # dual of the data term
    q = torch.zeros(x.shape[0], 2, *x.shape[1:], dtype=x.dtype, device=x.device)  # dual of TV
    for k in range(n_iter):
        p = (p + sigma * (projector(x_bar) - sino)) / (1.0 + sigma)
        q = q + sigma * gradient(x_bar)
        mag = torch.linalg.vector_norm(q, dim=1, keepdim=True)
        q = q / torch.clamp(mag / lam, min=1.0) if lam > 0 else torch.zeros_like(q)
        x_new = x - tau * (projector.adjoint(p) - divergence(q))
        if nonneg:
            x_new.clamp_(min=0)
        x_bar = 2.0 * x_new - x
        x = x_new
        if callback is not None:
            callback(k, x)
    return x
