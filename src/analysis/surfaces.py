"""Surface and interface areas of phases in a label volume, from marching-cubes meshes.

Each phase's indicator (1 inside, 0 outside) is smoothed with a Gaussian (``sigma`` voxels,
``mode="nearest"`` so that the volume's outer faces are *not* counted as surface) and meshed at
the 0.5 iso-level with :func:`skimage.measure.marching_cubes`. Every triangle is then assigned
to the phase found one voxel outside it along its outward normal, which splits the phase's
surface into interfaces with each other phase (works for any number of phases, no
triple-line algebra). Lengths are in voxels here; :mod:`src.analysis.morphology` converts.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage import measure

__all__ = ["SURFACE_SIGMA", "PhaseSurface", "mesh_area_volume", "phase_surface", "slab_halo",
           "smoothed_mesh"]

# Gaussian smoothing (voxels) before marching cubes. Spheres of radius 8-15 voxels give
# A/V = 3/r within 2.6 % (0.7 would be within 1.2 %), and on the real taufactor electrode
# (40 nm voxels) the areas agree within 5 % with taufactor's marching-cubes value for every
# phase; thin phases (CBD, 1-3 voxel features) are resolution-limited: their area changes by
# ±30 % between sigma 0.5 and 1.
SURFACE_SIGMA = 0.8

#: triangles handled at a time by :func:`phase_surface`
TRIANGLE_BLOCK = 1 << 20


@dataclass
class PhaseSurface:
    """Surface of one phase (areas in voxel² units).

    ``area``: whole mesh area; ``to_phase[j]``: area of the triangles facing phase ``j``
    (``to_phase[i]`` of the phase itself collects triangles that could not be assigned, e.g.
    thin features); shape ``(n_phases,)``.
    """

    area: float
    to_phase: np.ndarray


def smoothed_mesh(
    mask: np.ndarray, sigma: float, *, closed: bool = False
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Mesh of a binary ``mask`` (z, y, x): smooth the indicator, marching cubes at 0.5.

    The mask is padded by a few voxels: with ``closed`` by zeros (closed surface of an isolated
    object), else by edge values (``mode="nearest"``: the mesh stays open at the array faces
    and runs one voxel past them, see :func:`phase_surface`). Returns ``(verts (V, 3) in the
    mask's voxel coordinates, faces (F, 3), padded field)``, or ``None`` when the mask is empty
    or full (no iso-surface).
    """
    pad = max(2, int(np.ceil(3 * sigma))) if closed else 1
    field = np.pad(mask.astype(np.float32), pad, mode="constant" if closed else "edge")
    if sigma > 0:
        field = ndimage.gaussian_filter(field, sigma, mode="constant" if closed else "nearest")
    if not (field.min() < 0.5 < field.max()):
        return None
    verts, faces, _, _ = measure.marching_cubes(field, 0.5)
    return verts - pad, faces, field


def mesh_area_volume(verts: np.ndarray, faces: np.ndarray) -> tuple[float, float]:
    """Area and enclosed volume (divergence theorem; absolute value) of a closed triangle mesh."""
    a, b, c = (verts[faces[:, k]].astype(np.float64) for k in range(3))
    cross = np.cross(b - a, c - a)
    area = 0.5 * float(np.linalg.norm(cross, axis=1).sum())
    volume = abs(float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum()) / 6.0)
    return area, volume


#: voxels of context a slab needs on each side for :func:`phase_surface` to see exactly what the
#: whole volume gives inside it: the Gaussian's reach (scipy truncates at 4 sigma), one cell of
#: marching cubes and the two-voxel neighbour search
def slab_halo(sigma: float = SURFACE_SIGMA) -> int:
    """Halo (voxels along z) of an exact slab-wise :func:`phase_surface` (see above)."""
    return int(4.0 * sigma + 0.5) + 4


def phase_surface(
    labels: np.ndarray, phase: int, n_phases: int, sigma: float = SURFACE_SIGMA,
    z_window: tuple[float, float, bool] | None = None,
) -> PhaseSurface:
    """Mesh phase ``phase`` of ``labels`` (z, y, x) and split its area by neighbouring phase.

    A triangle's neighbour is the label of the voxel nearest to ``centroid + 1 · n_out`` (then
    ``+ 2 · n_out`` if that voxel is still the phase itself); ``n_out`` is the unit normal
    pointing out of the phase. ``z_window`` ``(lo, hi, hi_inclusive)``: keep the triangles whose
    centroid lies in ``[lo, hi)`` along z (``[lo, hi]`` when inclusive), in ``labels``'
    coordinates; the default is the whole volume, ``[-0.5, z - 0.5]``. Slabs of a larger volume
    with :func:`slab_halo` voxels of context and windows that tile it give, summed, the
    whole-volume surface.
    """
    mesh = smoothed_mesh(labels == phase, sigma)
    if mesh is None:
        return PhaseSurface(0.0, np.zeros(n_phases))
    verts, faces = mesh[0], mesh[1]
    del mesh  # the smoothed field: not needed while the triangles are processed
    total, to_phase = 0.0, np.zeros(n_phases)
    # triangles in blocks: the per-triangle temporaries (corners, centroids, normals, indices:
    # ~200 bytes a triangle) stay bounded however large the mesh (a 1024^2 x 46 slab has ~10^7)
    for lo in range(0, faces.shape[0], TRIANGLE_BLOCK):
        area, neighbour = _triangle_neighbours(labels, verts, faces[lo:lo + TRIANGLE_BLOCK], phase, z_window)
        total += float(area.sum())
        to_phase += np.bincount(neighbour, weights=area, minlength=n_phases)[:n_phases]
    return PhaseSurface(total, to_phase)


def _triangle_neighbours(
    labels: np.ndarray, verts: np.ndarray, faces: np.ndarray, phase: int,
    z_window: tuple[float, float, bool] | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Area (F',) and neighbouring phase (F',) of the triangles of ``faces`` kept by the windows."""
    a, b, c = (verts[faces[:, k]] for k in range(3))
    centroid = (a + b + c) / 3.0
    # the mesh runs one voxel past the array faces: keep triangles inside the voxels' extent
    inside = np.all((centroid >= -0.5) & (centroid <= np.array(labels.shape) - 0.5), axis=1)
    if z_window is not None:
        lo, hi, inclusive = z_window
        z = centroid[:, 0]
        inside &= (z >= lo) & ((z <= hi) if inclusive else (z < hi))
    a, b, c, centroid = a[inside], b[inside], c[inside], centroid[inside]
    cross = np.cross(b - a, c - a)
    del a, b, c
    norm = np.linalg.norm(cross, axis=1)
    keep = norm > 0
    centroid, norm = centroid[keep], norm[keep]
    # skimage's winding (gradient_direction="descent") makes (b - a) × (c - a) point into the
    # high-indicator side, i.e. into the phase: the outward normal is its opposite
    normal = cross[keep] / -norm[:, None]
    upper = np.array(labels.shape) - 1
    neighbour = np.full(centroid.shape[0], phase, dtype=np.int64)
    for step in (1.0, 2.0):
        todo = neighbour == phase
        idx = np.clip(np.rint(centroid[todo] + step * normal[todo]), 0, upper).astype(np.intp)
        neighbour[todo] = labels[idx[:, 0], idx[:, 1], idx[:, 2]]
    return 0.5 * norm, neighbour
