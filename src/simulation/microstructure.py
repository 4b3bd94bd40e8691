"""Synthetic battery-electrode microstructure: NMC particles, carbon-binder domain (CBD), pore.

Labels follow the real data: ``0 = NMC``, ``1 = CBD``, ``2 = pore`` (:data:`PHASES`), volumes are
``(z, y, x)`` uint8. Generation is vectorised per particle on local bounding boxes:

1. polydisperse ellipsoidal secondary particles (log-normal radius, random orientation) are placed
   at random, half of them in contact with an earlier particle, with a bounded overlap; a field
   keeps, per voxel, the approximate signed distance (voxels) to the nearest and second-nearest
   particle surface;
2. a fraction of the particles gets thin, wavy, sometimes branched internal cracks (pore);
3. the NMC level set is shifted to hit the NMC fraction exactly;
4. CBD fills the pore voxels with the lowest "neck score" (close to two particles, i.e. contacts
   and bridges, and close to surfaces) perturbed by a two-scale random texture, so it coats
   surfaces in patches and forms porous bridges; its threshold hits the CBD fraction exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["PHASES", "MicrostructureConfig", "generate_microstructure", "phase_fractions"]

PHASES: tuple[str, ...] = ("NMC", "CBD", "pore")  # label value = index
_FAR = np.float32(1e4)  # "no particle nearby" distance (voxels)


@dataclass
class MicrostructureConfig:
    """Parameters of the synthetic electrode (lengths in nm unless the name says ``vox``)."""

    shape: tuple[int, int, int] = (128, 128, 128)
    nmc_fraction: float = 0.50
    cbd_fraction: float = 0.15
    radius_median_nm: float = 600.0
    radius_sigma: float = 0.35  # log-normal sigma of the particle radius
    radius_min_nm: float = 150.0
    voxel_size_nm: float = 40.0
    ellipsoid_aspect_max: float = 1.3  # longest / shortest semi-axis
    overlap_max: float = 0.2  # max penetration of a new particle, fraction of its radius
    contact_probability: float = 0.5  # share of particles placed touching an earlier one
    cracked_fraction: float = 0.25
    crack_width_vox: float = 1.0
    cracks_max: int = 3  # planes per cracked particle (later ones branch off the first)
    cbd_bridge_nm: float = 300.0  # length scale of CBD necks / coatings
    cbd_bridge_bias: float = 0.5  # weight of the second-nearest particle distance (necks)
    cbd_texture_nm: float = 80.0  # correlation length of the CBD nano-porosity
    cbd_texture_strength: float = 0.5
    cbd_patch_nm: float = 400.0  # correlation length of patchy coverage
    cbd_patch_strength: float = 0.8

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        if len(self.shape) != 3 or min(self.shape) < 8:
            raise ValueError(f"shape must be 3 sizes >= 8, got {self.shape}")
        if not (0 < self.nmc_fraction < 1 and 0 <= self.cbd_fraction < 1):
            raise ValueError("nmc_fraction must be in (0, 1) and cbd_fraction in [0, 1)")
        if self.nmc_fraction + self.cbd_fraction >= 1:
            raise ValueError("nmc_fraction + cbd_fraction must be < 1 (pore is the rest)")

    def vox(self, nm: float) -> float:
        """Convert a length in nm to voxels."""
        return nm / self.voxel_size_nm


def phase_fractions(labels: np.ndarray) -> dict[str, float]:
    """Volume fraction per phase name of a label volume."""
    counts = np.bincount(labels.ravel(), minlength=len(PHASES))[: len(PHASES)]
    return {name: float(c) / labels.size for name, c in zip(PHASES, counts, strict=True)}


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniform random 3x3 rotation (QR of a Gaussian matrix with sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal((3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


@dataclass
class _Particle:
    center: np.ndarray  # (3,) voxels, (z, y, x)
    axes: np.ndarray  # (3,) semi-axes, voxels
    rot: np.ndarray  # (3, 3), columns = particle axes in (z, y, x)
    cracked: bool


def _local(p: _Particle, shape: tuple[int, ...], margin: float):
    """Bounding box slices and particle-frame coordinates ``(u/axes)`` on it, or None if empty."""
    ext = p.axes.max() + margin
    lo = np.maximum(np.floor(p.center - ext).astype(int), 0)
    hi = np.minimum(np.ceil(p.center + ext).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return None
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    grids = np.ogrid[box]
    d = [g.astype(np.float32) - np.float32(c) for g, c in zip(grids, p.center, strict=True)]
    rot = p.rot.astype(np.float32)
    v = [(d[0] * rot[0, k] + d[1] * rot[1, k] + d[2] * rot[2, k]) / np.float32(p.axes[k])
         for k in range(3)]
    return box, v


def _place_particles(
    cfg: MicrostructureConfig, rng: np.random.Generator, margin: float
) -> tuple[list[_Particle], np.ndarray, np.ndarray, np.ndarray]:
    """Place particles until their union reaches the NMC target (plus crack allowance).

    Returns particles, nearest and second-nearest signed distance (voxels), owner index.
    """
    shape = cfg.shape
    n_vox = int(np.prod(shape))
    d1 = np.full(shape, _FAR, np.float32)
    d2 = np.full(shape, _FAR, np.float32)
    owner = np.full(shape, -1, np.int32)
    r_med, r_min = cfg.vox(cfg.radius_median_nm), max(cfg.vox(cfg.radius_min_nm), 1.5)
    target = cfg.nmc_fraction * (1.0 + 0.03 * cfg.cracked_fraction) * n_vox
    size = np.array(shape, float)
    particles: list[_Particle] = []
    filled, attempts = 0, 0
    while filled < target and attempts < 50_000:
        attempts += 1
        r = max(r_med * np.exp(cfg.radius_sigma * rng.standard_normal()), r_min)
        aspect = rng.uniform(1.0, cfg.ellipsoid_aspect_max, 3)
        axes = r * aspect / np.cbrt(aspect.prod())  # same volume as the sphere of radius r
        if particles and rng.random() < cfg.contact_probability:
            other = particles[rng.integers(len(particles))]
            u = rng.standard_normal(3)
            dist = other.axes.mean() + r * (1.0 - cfg.overlap_max * rng.random())
            center = other.center + dist * u / np.linalg.norm(u)
        else:
            center = rng.uniform(-0.3 * r, size - 1 + 0.3 * r)
        probe = tuple(np.clip(np.round(center).astype(int), 0, np.array(shape) - 1))
        if d1[probe] < r * (1.0 - cfg.overlap_max) - np.linalg.norm(center - probe):
            continue  # too much overlap with an existing particle
        p = _Particle(center, axes, _random_rotation(rng), rng.random() < cfg.cracked_fraction)
        loc = _local(p, shape, margin)
        if loc is None:
            continue
        box, v = loc
        f = (np.sqrt(v[0] ** 2 + v[1] ** 2 + v[2] ** 2) - 1.0) * np.float32(axes.min())
        b1, b2 = d1[box], d2[box]
        filled += int(np.count_nonzero((f < 0) & (b1 >= 0)))
        closer = f < b1
        b2[...] = np.minimum(b2, np.maximum(b1, f))
        b1[...] = np.where(closer, f, b1)
        owner[box] = np.where(closer, len(particles), owner[box])
        particles.append(p)
    return particles, d1, d2, owner


def _crack_mask(
    cfg: MicrostructureConfig, particles: list[_Particle], owner: np.ndarray,
    rng: np.random.Generator,
) -> np.ndarray:
    """Thin wavy planar cracks (some branching) strictly inside the cracked particles."""
    cracks = np.zeros(cfg.shape, bool)
    half_width = np.float32(cfg.crack_width_vox / 2)
    for pid, p in enumerate(particles):
        if not p.cracked or p.axes.min() < 5:
            continue
        loc = _local(p, cfg.shape, 0.0)
        if loc is None:
            continue
        box, v = loc
        inside = (v[0] ** 2 + v[1] ** 2 + v[2] ** 2 < 0.8**2) & (owner[box] == pid)
        scale = np.float32(p.axes.mean())
        first = None
        for k in range(int(rng.integers(1, cfg.cracks_max + 1))):
            n = rng.standard_normal(3)
            n /= np.linalg.norm(n)
            e = np.cross(n, rng.standard_normal(3))
            e /= np.linalg.norm(e)
            s = v[0] * n[0] + v[1] * n[1] + v[2] * n[2]
            t = v[0] * e[0] + v[1] * e[1] + v[2] * e[2]
            wave = 0.08 * np.sin(rng.uniform(2, 5) * t + rng.uniform(0, 2 * np.pi))
            g = (s - rng.uniform(-0.3, 0.3) - wave) * scale  # voxels from the crack mid-plane
            plane = (np.abs(g) < half_width) & inside
            if k == 0:
                first = g
            else:  # branch: only on one side of the first crack
                plane &= first > 0
            cracks[box] |= plane
    return cracks


def _smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian random field with correlation length ~``sigma`` voxels.

    Large ``sigma`` is computed on a coarser grid and upsampled (linear) for speed.
    """
    factor = max(1, int(sigma // 2))
    coarse = tuple(-(-s // factor) + 2 for s in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32),
                                    sigma / factor, mode="wrap")
    if factor > 1:
        field = ndimage.zoom(field, factor, order=1)
    field = field[tuple(slice(0, s) for s in shape)]
    return (field - field.mean()) / (field.std() + 1e-12)


def _lowest(score: np.ndarray, candidates: np.ndarray, count: int) -> np.ndarray:
    """Mask of the ``count`` candidate voxels with the lowest score."""
    mask = np.zeros(score.shape, bool)
    idx = np.flatnonzero(candidates)
    count = min(max(count, 0), idx.size)
    if count:
        vals = score.ravel()[idx]
        mask.ravel()[idx[np.argpartition(vals, count - 1)[:count]]] = True
    return mask


def generate_microstructure(cfg: MicrostructureConfig, seed: int) -> np.ndarray:
    """Label volume ``cfg.shape`` ``(z, y, x)`` uint8 with 0 = NMC, 1 = CBD, 2 = pore.

    Phase fractions match the config to within one voxel; same ``cfg`` and ``seed`` give the
    same array.
    """
    rng = np.random.default_rng(seed)
    n_vox = int(np.prod(cfg.shape))
    bridge = max(cfg.vox(cfg.cbd_bridge_nm), 1.0)
    margin = 3.0 * bridge + 2.0
    particles, d1, d2, owner = _place_particles(cfg, rng, margin)
    cracks = _crack_mask(cfg, particles, owner, rng)
    # NMC: the n lowest distances outside cracks -> exact fraction (shifts the level set)
    nmc = _lowest(d1, ~cracks, round(cfg.nmc_fraction * n_vox))
    tau = d1[nmc].max() if nmc.any() else np.float32(0)
    # CBD: necks (near two particles) and patchy coatings, with a porous texture
    score = (d1 - tau) + np.float32(cfg.cbd_bridge_bias) * np.minimum(d2 - tau, 3 * bridge)
    score /= np.float32(bridge)
    score -= np.float32(cfg.cbd_texture_strength) * _smooth_noise(
        cfg.shape, max(cfg.vox(cfg.cbd_texture_nm), 0.5), rng)
    score -= np.float32(cfg.cbd_patch_strength) * _smooth_noise(
        cfg.shape, max(cfg.vox(cfg.cbd_patch_nm), 0.5), rng)
    cbd = _lowest(score, ~nmc & ~cracks, round(cfg.cbd_fraction * n_vox))
    labels = np.full(cfg.shape, PHASES.index("pore"), np.uint8)
    labels[nmc] = PHASES.index("NMC")
    labels[cbd] = PHASES.index("CBD")
    return labels
