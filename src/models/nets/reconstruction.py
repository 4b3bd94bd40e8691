"""Learned reconstruction networks for 2D parallel-beam CT. Pure ``torch.nn``.

All nets map sinograms ``(B, 1, A, n_det)`` (line integrals in pixel units of the image values,
i.e. ``A x`` for the project's :class:`~src.recon.operators.ParallelBeamProjector` ``A``) to
images ``(B, 1, H, W)``, and own the projector of their training geometry (``.projector``):

* :class:`LearnedPrimalDual` -- Adler & Oektem (IEEE TMI 2018): unrolled primal-dual iterations
  whose proximal steps are small residual CNNs, with primal and dual memories;
* :class:`LearnedGradientDescent` -- Adler & Oektem (Inverse Problems 2017): unrolled gradient
  steps ``x <- x + CNN(x, A^T(A x - y), memory)``;
* :class:`FBPConvNet` -- Jin et al. (IEEE TIP 2017): FBP followed by a residual U-Net.

The operator inside LPD/LGD is normalised, ``A / ||A||`` (and the data ``y / ||A||``), so that
the CNNs see values of order one whatever the geometry; ``||A||`` is estimated once by power
iteration and stored as a buffer (it travels with the weights).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from src.models.nets.unet import UNet
from src.recon.fbp import FILTERS, fbp
from src.recon.iterative import operator_norm
from src.recon.operators import ParallelBeamProjector

__all__ = [
    "FBPConvNet",
    "LearnedGradientDescent",
    "LearnedPrimalDual",
    "ReconNet",
    "even_angles",
    "make_projector",
]


def even_angles(n_angles: int, angle_range: float = math.pi) -> np.ndarray:
    """``n_angles`` angles (radians, float64) evenly spaced over ``[0, angle_range)``."""
    if n_angles < 1:
        raise ValueError(f"n_angles must be >= 1, got {n_angles}")
    return np.linspace(0.0, angle_range, int(n_angles), endpoint=False)


def make_projector(
    image_size: int | Sequence[int],
    n_angles: int | None = None,
    n_det: int | None = None,
    center: float | None = None,
    theta: Sequence[float] | np.ndarray | None = None,
) -> ParallelBeamProjector:
    """Projector for ``(H, W)`` slices (an int means square).

    Uses ``theta`` or ``n_angles`` even angles over ``[0, pi)``; ``n_det`` defaults to ``W``,
    ``center`` to ``n_det / 2``.
    """
    size = (int(image_size), int(image_size)) if np.isscalar(image_size) else tuple(
        int(s) for s in image_size)  # type: ignore[union-attr]
    if len(size) != 2:
        raise ValueError(f"image_size must be an int or (H, W), got {image_size}")
    if theta is None:
        if n_angles is None:
            raise ValueError("give n_angles or theta")
        theta = even_angles(n_angles)
    elif n_angles is not None and int(np.size(theta)) != int(n_angles):
        raise ValueError(f"theta has {np.size(theta)} angles, n_angles={n_angles}")
    # cache=None: the nets apply the operator thousands of times at small sizes, where the stored
    # CSR weights are measured faster on CPU (src.recon.operators.CACHE_MAX_ENTRIES)
    return ParallelBeamProjector(size, theta, n_det=n_det, center=center,  # type: ignore[arg-type]
                                 cache=None)


def _as_sino(sino: Tensor, projector: ParallelBeamProjector) -> Tensor:
    """``(B, 1, A, n_det)`` or ``(B, A, n_det)`` -> ``(B, A, n_det)`` with a clear shape error."""
    if sino.dim() == 4 and sino.shape[1] == 1:
        sino = sino[:, 0]
    if sino.dim() != 3 or tuple(sino.shape[1:]) != projector.sino_shape:
        a, d = projector.sino_shape
        raise ValueError(f"sinogram must be (B, 1, {a}, {d}) for this net's geometry, got "
                         f"{tuple(sino.shape)}")
    return sino


class ReconNet(nn.Module):
    """Base class: holds the projector (given, or built from geometry arguments).

    Args:
        projector: the forward model; if None it is built by :func:`make_projector` from
            ``image_size``, ``n_angles``, ``n_det``, ``center``.
    """

    def __init__(
        self,
        projector: ParallelBeamProjector | None = None,
        image_size: int | Sequence[int] | None = None,
        n_angles: int | None = None,
        n_det: int | None = None,
        center: float | None = None,
    ) -> None:
        super().__init__()
        if projector is None:
            if image_size is None or n_angles is None:
                raise ValueError("give a projector or the geometry (image_size, n_angles)")
            projector = make_projector(image_size, n_angles, n_det, center)
        self.projector = projector

    @property
    def image_shape(self) -> tuple[int, int]:
        """``(H, W)`` of the output slices."""
        return self.projector.image_shape

    def set_projector(self, projector: ParallelBeamProjector) -> None:
        """Swap the geometry (e.g. measured angles or rotation centre of real data).

        The image shape and sinogram shape must stay those the net was built for.
        """
        if (projector.image_shape != self.projector.image_shape
                or projector.sino_shape != self.projector.sino_shape):
            raise ValueError(
                f"new geometry {projector.image_shape} / {projector.sino_shape} differs from the "
                f"net's {self.projector.image_shape} / {self.projector.sino_shape}")
        self.projector = projector

    def fbp(self, sino: Tensor, filter_name: str = "ramp") -> Tensor:
        """FBP of ``(B, 1, A, n_det)`` -> ``(B, 1, H, W)`` with the net's projector."""
        return fbp(_as_sino(sino, self.projector), self.projector, filter_name)[:, None]


def _residual_cnn(c_in: int, c_out: int, width: int, depth: int, zero_last: bool = False) -> nn.Sequential:
    """``depth`` 3x3 convs (``width`` channels, PReLU between) ``c_in -> c_out``.

    Last bias zero (and its weights zero with ``zero_last``: the update starts at zero).
    """
    layers: list[nn.Module] = []
    c = c_in
    for _ in range(depth - 1):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.PReLU(width)]
        c = width
    last = nn.Conv2d(c, c_out, 3, padding=1)
    nn.init.zeros_(last.bias)
    if zero_last:
        nn.init.zeros_(last.weight)
    layers.append(last)
    return nn.Sequential(*layers)


class _NormalisedOperatorNet(ReconNet):
    """A :class:`ReconNet` that applies ``A / ||A||``; ``||A||`` is a buffer (estimated if None)."""

    def __init__(self, projector: ParallelBeamProjector | None, image_size: int | Sequence[int] | None,
                 n_angles: int | None, n_det: int | None, center: float | None,
                 op_norm: float | None) -> None:
        super().__init__(projector, image_size, n_angles, n_det, center)
        if op_norm is None:
            op_norm = operator_norm(self.projector, n_iter=15, dtype=torch.float32)
        self.register_buffer("op_norm", torch.tensor(float(op_norm)))

    def _fwd(self, x: Tensor) -> Tensor:
        """``A x / ||A||``: ``(B, H, W) -> (B, A, n_det)``."""
        return self.projector(x) / self.op_norm

    def _adj(self, y: Tensor) -> Tensor:
        """``A^T y / ||A||``: ``(B, A, n_det) -> (B, H, W)``."""
        return self.projector.adjoint(y) / self.op_norm


class LearnedPrimalDual(_NormalisedOperatorNet):
    """Learned Primal-Dual (Adler & Oektem 2018): ``(B, 1, A, n_det) -> (B, 1, H, W)``.

    ``n_iter`` unrolled iterations with separate weights; primal memory ``f`` ``(B, n_primal, H, W)``
    and dual memory ``h`` ``(B, n_dual, A, n_det)`` start at zero (``init="fbp"``: every primal
    channel starts at the FBP instead, which trains much faster on short budgets). Each iteration:
    ``h <- h + Gamma([h, A f[1], g])`` then ``f <- f + Lambda([f, A^T h[0]])``, where Gamma and
    Lambda are residual CNNs of ``depth`` 3x3 convs with ``width`` channels and PReLU. Returns
    ``f[0]``.

    Args:
        projector / image_size, n_angles, n_det, center: the geometry (see :class:`ReconNet`).
        n_iter: unrolled iterations (paper: 10).
        n_primal, n_dual: memory channels (paper: 5 each).
        width: hidden channels of each CNN (paper: 32).
        depth: convolutions per CNN (paper: 3).
        init: ``"zero"`` (paper) or ``"fbp"`` (primal memory starts at the FBP).
        filter_name: FBP filter of ``init="fbp"``.
        zero_updates: start every residual update at zero (last conv of each CNN zero), so the
            untrained net returns its initial guess (the FBP with ``init="fbp"``) instead of
            that guess disturbed by 20 random CNNs.
        op_norm: ``||A||`` if known (else power iteration).
    """

    def __init__(
        self,
        projector: ParallelBeamProjector | None = None,
        image_size: int | Sequence[int] | None = None,
        n_angles: int | None = None,
        n_det: int | None = None,
        center: float | None = None,
        n_iter: int = 10,
        n_primal: int = 5,
        n_dual: int = 5,
        width: int = 32,
        depth: int = 3,
        init: str = "zero",
        filter_name: str = "ramp",
        zero_updates: bool = False,
        op_norm: float | None = None,
    ) -> None:
        super().__init__(projector, image_size, n_angles, n_det, center, op_norm)
        if n_iter < 1 or n_primal < 2 or n_dual < 1:
            raise ValueError("need n_iter >= 1, n_primal >= 2, n_dual >= 1")
        if init not in ("fbp", "zero"):
            raise ValueError(f"init must be 'fbp' or 'zero', got {init!r}")
        if filter_name not in FILTERS:
            raise ValueError(f"unknown filter {filter_name!r}; choose one of {FILTERS}")
        self.n_iter, self.n_primal, self.n_dual = n_iter, n_primal, n_dual
        self.init, self.filter_name = init, filter_name
        self.dual_nets = nn.ModuleList(
            _residual_cnn(n_dual + 2, n_dual, width, depth, zero_updates) for _ in range(n_iter))
        self.primal_nets = nn.ModuleList(
            _residual_cnn(n_primal + 1, n_primal, width, depth, zero_updates) for _ in range(n_iter))

    def forward(self, sino: Tensor) -> Tensor:
        """``(B, 1, A, n_det)`` line integrals -> ``(B, 1, H, W)`` image."""
        y = _as_sino(sino, self.projector)
        g = y / self.op_norm
        b = g.shape[0]
        if self.init == "fbp":
            f = fbp(y, self.projector, self.filter_name)[:, None].repeat(1, self.n_primal, 1, 1)
        else:
            f = g.new_zeros(b, self.n_primal, *self.image_shape)
        h = g.new_zeros(b, self.n_dual, *self.projector.sino_shape)
        for dual_net, primal_net in zip(self.dual_nets, self.primal_nets, strict=True):
            h = h + dual_net(torch.cat([h, self._fwd(f[:, 1])[:, None], g[:, None]], dim=1))
            f = f + primal_net(torch.cat([f, self._adj(h[:, 0])[:, None]], dim=1))
        return f[:, :1]


class LearnedGradientDescent(_NormalisedOperatorNet):
    """Learned Gradient Descent (Adler & Oektem 2017): ``(B, 1, A, n_det) -> (B, 1, H, W)``.

    ``x_0`` is the FBP (``init="fbp"``) or zero; each of ``n_iter`` iterations (own weights) maps
    ``[x, A^T(A x - y), s]`` (normalised operator, memory ``s`` of ``n_memory`` channels from zero)
    through a residual CNN to ``[dx, ds]`` and sets ``x <- x + dx``, ``s <- s + ds``.

    Args:
        projector / image_size, n_angles, n_det, center: the geometry (see :class:`ReconNet`).
        n_iter: unrolled iterations.
        n_memory: memory channels.
        width, depth: hidden channels and 3x3 convs of each CNN.
        init: ``"fbp"`` or ``"zero"``.
        filter_name: FBP filter of the initial guess.
        op_norm: ``||A||`` if known (else power iteration).
    """

    def __init__(
        self,
        projector: ParallelBeamProjector | None = None,
        image_size: int | Sequence[int] | None = None,
        n_angles: int | None = None,
        n_det: int | None = None,
        center: float | None = None,
        n_iter: int = 10,
        n_memory: int = 5,
        width: int = 32,
        depth: int = 3,
        init: str = "fbp",
        filter_name: str = "ramp",
        op_norm: float | None = None,
    ) -> None:
        super().__init__(projector, image_size, n_angles, n_det, center, op_norm)
        if init not in ("fbp", "zero"):
            raise ValueError(f"init must be 'fbp' or 'zero', got {init!r}")
        if filter_name not in FILTERS:
            raise ValueError(f"unknown filter {filter_name!r}; choose one of {FILTERS}")
        self.n_iter, self.n_memory, self.init, self.filter_name = n_iter, n_memory, init, filter_name
        self.nets = nn.ModuleList(
            _residual_cnn(2 + n_memory, 1 + n_memory, width, depth) for _ in range(n_iter))

    def forward(self, sino: Tensor) -> Tensor:
        """``(B, 1, A, n_det)`` line integrals -> ``(B, 1, H, W)`` image."""
        y = _as_sino(sino, self.projector)
        g = y / self.op_norm
        if self.init == "fbp":
            x = fbp(y, self.projector, self.filter_name)[:, None]
        else:
            x = y.new_zeros(y.shape[0], 1, *self.image_shape)
        s = y.new_zeros(y.shape[0], self.n_memory, *self.image_shape)
        for net in self.nets:
            grad = self._adj(self._fwd(x[:, 0]) - g)[:, None]
            update = net(torch.cat([x, grad, s], dim=1))
            x = x + update[:, :1]
            s = s + update[:, 1:]
        return x


class FBPConvNet(ReconNet):
    """FBPConvNet (Jin et al. 2017): ``x = FBP(y) + UNet(FBP(y))``, ``(B, 1, A, n_det) -> (B, 1, H, W)``.

    Args:
        projector / image_size, n_angles, n_det, center: the geometry (see :class:`ReconNet`).
        base_filters, depth, norm: the U-Net (:class:`~src.models.nets.unet.UNet`); ``H`` and ``W``
            must be multiples of ``2**depth``.
        filter_name: FBP filter.
    """

    def __init__(
        self,
        projector: ParallelBeamProjector | None = None,
        image_size: int | Sequence[int] | None = None,
        n_angles: int | None = None,
        n_det: int | None = None,
        center: float | None = None,
        base_filters: int = 32,
        depth: int = 4,
        norm: str = "batch",
        filter_name: str = "ramp",
    ) -> None:
        super().__init__(projector, image_size, n_angles, n_det, center)
        if filter_name not in FILTERS:
            raise ValueError(f"unknown filter {filter_name!r}; choose one of {FILTERS}")
        h, w = self.image_shape
        if h % 2**depth or w % 2**depth:
            raise ValueError(f"FBPConvNet(depth={depth}) needs image sides that are multiples of "
                             f"{2**depth}, got {self.image_shape}")
        self.filter_name = filter_name
        self.unet = UNet(spatial_dims=2, in_channels=1, num_classes=1, base_filters=base_filters,
                         depth=depth, norm=norm)  # type: ignore[arg-type]

    def forward(self, sino: Tensor) -> Tensor:
        """``(B, 1, A, n_det)`` line integrals -> ``(B, 1, H, W)`` image."""
        x = self.fbp(sino, self.filter_name)
        return x + self.unet(x)
