"""How far a net looks: the receptive radius that sets the halo of exact tiled prediction."""

from __future__ import annotations

import copy

import torch
from torch import nn


def receptive_radius(net: nn.Module, spatial_dims: int, size_multiple: int, trials: int = 4,
                     max_side: int = 4096) -> tuple[int, ...]:
    """Per axis, the distance (voxels) beyond which an input change cannot reach an output voxel.

    Measured, not derived, so it holds for any net (LRCS-Net, U-Net, MONAI nets): the gradient
    of a ``size_multiple``-wide block of outputs at the centre of a random input, on the CPU, over ``trials`` inputs (max-pools and ReLUs pass gradient only where they select,
    so several inputs cover the support). Each axis is probed with a slab that is long along it
    and ``2 * size_multiple`` wide across; the length doubles until the support stops short of
    the ends. Raises ValueError when it still reaches them at ``max_side``.
    """
    probe = copy.deepcopy(net).to("cpu", torch.float32).eval()
    for p in probe.parameters():
        p.requires_grad_(False)
    m = size_multiple
    gen = torch.Generator().manual_seed(0)
    radii = []
    for axis in range(spatial_dims):
        side = 8 * m
        while True:
            if side > max_side:
                raise ValueError(f"the receptive field of {type(net).__name__} exceeds {max_side} voxels "
                                 "along an axis; set the halo explicitly")
            shape = [2 * m] * spatial_dims
            shape[axis] = side
            c0 = side // 2 - (side // 2) % m
            block = [slice(None), slice(None)] + [slice(0, 2 * m)] * spatial_dims
            block[2 + axis] = slice(c0, c0 + m)
            support = torch.zeros(side, dtype=torch.bool)
            for _ in range(trials):
                x = torch.rand((1, 1, *shape), generator=gen, requires_grad=True)
                probe(x)[tuple(block)].sum().backward()
                others = tuple(d for d in range(spatial_dims) if d != axis)
                support |= (x.grad[0, 0] != 0).any(dim=others) if others else x.grad[0, 0] != 0
            idx = torch.nonzero(support)[:, 0]
            if len(idx) == 0:
                raise ValueError(f"{type(net).__name__}: no input reaches the output in the receptive-field "
                                 "probe (dead activations?); set the halo explicitly")
            lo, hi = int(idx.min()), int(idx.max())
            if lo > 0 and hi < side - 1:
                radii.append(max(c0 - lo, hi - (c0 + m - 1)))
                break
            side *= 2
    return tuple(radii)


def exact_halo(net: nn.Module, spatial_dims: int, size_multiple: int) -> tuple[int, ...]:
    """Per axis, the receptive radius rounded up to a multiple of ``size_multiple`` (aligned tiles)."""
    return tuple(-(-r // size_multiple) * size_multiple
                 for r in receptive_radius(net, spatial_dims, size_multiple))
