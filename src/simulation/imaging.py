"""Nano-CT (Zernike phase-contrast TXM) image formation for synthetic label volumes.

``labels (z, y, x)`` -> attenuation map (1/voxel) embedded in a cylindrical sample (mirror-padded
so that the sample edge lies outside the label grid) -> parallel-beam projections with the
project's :class:`~src.recon.operators.ParallelBeamProjector` -> detector blur -> Zernike halo
(high-pass of the projected phase ~ attenuation) -> Poisson counts with per-pixel gain errors
(rings) -> flat-field + ``-log`` -> beam hardening (cupping) -> FBP (:func:`~src.recon.fbp.fbp`)
-> crop to the label grid -> smooth multiplicative intensity field -> gamma. Grey values are
attenuation per voxel plus artefacts (float32). The last four stages are off by default; the
domain randomisation (:mod:`src.simulation.randomization`) draws all of them per volume.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage
from tqdm.auto import tqdm

from src.recon.fbp import fbp
from src.recon.operators import ParallelBeamProjector

__all__ = ["ImagingConfig", "apply_gamma", "beam_hardening", "detector_optics", "embed_in_cylinder",
           "intensity_field", "measure_line_integrals", "simulate_tomography"]


@dataclass
class ImagingConfig:
    """Acquisition and artefact parameters (pixel = voxel of the label grid)."""

    n_angles: int = 181  # equally spaced over [0, pi)
    photons: float = 10000.0  # incident photons per detector pixel in the flat field (Poisson)
    attenuation: tuple[float, ...] = (0.02, 0.005, 0.0005)  # 1/voxel, per label (NMC, CBD, pore)
    nmc_density_std: float = 0.0  # relative std of NMC's attenuation (grain/density variation)
    cbd_density_std: float = 0.0  # relative std of CBD's attenuation (sub-voxel nano-porosity)
    density_sigma_px: float = 1.0  # correlation length of those density fields
    detector_blur_px: float = 0.8  # Gaussian sigma on the detector
    halo_strength: float = 0.8  # Zernike halo: p + s (p - G_sigma p)
    halo_sigma_px: float = 3.0
    ring_strength: float = 0.005  # relative per-pixel detector gain error (std)
    cupping: float = 0.0  # beam hardening: measured p -> p - cupping * p**2 / max(p) (>= 0)
    field_strength: float = 0.0  # std of a smooth multiplicative intensity field (log scale)
    field_sigma_px: float = 32.0  # its correlation length
    gamma: float = 1.0  # grey values g -> lo + (hi - lo) * ((g - lo) / (hi - lo)) ** gamma
    filter_name: str = "shepp-logan"
    pad_px: int | None = None  # mirror padding in y/x; None: enough for the cylinder FOV
    chunk_slices: int = 32  # z slices per projector call

    def __post_init__(self) -> None:
        self.attenuation = tuple(float(a) for a in self.attenuation)
        if self.n_angles < 2:
            raise ValueError(f"imaging.n_angles must be >= 2, got {self.n_angles}")
        if self.photons <= 0:
            raise ValueError(f"imaging.photons must be > 0, got {self.photons}")
        for key in ("detector_blur_px", "halo_sigma_px", "ring_strength", "cupping", "field_strength",
                    "nmc_density_std", "cbd_density_std", "density_sigma_px"):
            if getattr(self, key) < 0:
                raise ValueError(f"imaging.{key} must be >= 0, got {getattr(self, key)}")
        if self.gamma <= 0 or self.field_sigma_px <= 0:
            raise ValueError(f"imaging.gamma and imaging.field_sigma_px must be > 0, got "
                             f"{self.gamma}, {self.field_sigma_px}")


def _pad_for_cylinder(ny: int, nx: int) -> int:
    """Padding such that the label grid's corners lie inside the inscribed cylinder."""
    return max(0, math.ceil(math.hypot(ny, nx) / 2 - min(ny, nx) / 2) + 2)


def _sample(labels: np.ndarray, cfg: ImagingConfig, pad: int, seed: int) -> np.ndarray:
    """Attenuation ``(z, y + 2 pad, x + 2 pad)`` float32: mirror-padded, zero outside the cylinder.

    Each phase has its ``attenuation``; with ``nmc_density_std`` / ``cbd_density_std`` > 0 the
    NMC (label 0) and CBD (label 1) voxels are scaled by ``1 + std * f`` (clipped at 0), where ``f``
    is a unit-variance Gaussian random field of correlation length ``density_sigma_px``: real
    CBD is a nano-porous mixture whose grey is mottled, not one constant.
    """
    lut = np.asarray(cfg.attenuation, np.float32)
    if labels.max(initial=0) >= lut.size:
        raise ValueError(f"label {labels.max()} has no attenuation (got {lut.size} phases)")
    mu = lut[labels]
    stds = np.zeros(lut.size, np.float32)
    stds[:2] = (cfg.nmc_density_std, cfg.cbd_density_std)[: min(2, lut.size)]
    if stds.any():  # own stream: the noise and gain draws stay those of a constant phantom
        rng = np.random.default_rng([int(seed), 7_3401])
        field = ndimage.gaussian_filter(rng.standard_normal(labels.shape, dtype=np.float32),
                                        cfg.density_sigma_px, mode="wrap")
        field /= field.std() + np.float32(1e-12)
        mu *= np.clip(1 + stds[labels] * field, 0, None)
    return embed_in_cylinder(mu, pad)


def embed_in_cylinder(volume: np.ndarray, pad: int) -> np.ndarray:
    """Embed an attenuation volume in a cylinder: mirror-padded in y/x, zero outside it.

    ``(z, y, x)`` attenuation → ``(z, y + 2 pad, x + 2 pad)`` float32, mirror-padded in y/x and
    zero outside the inscribed cylinder (the sample edge lies outside the label grid).
    """
    mu = np.pad(np.asarray(volume, np.float32), ((0, 0), (pad, pad), (pad, pad)), mode="symmetric")
    h, w = mu.shape[1:]
    yy, xx = np.ogrid[:h, :w]
    r = np.hypot(yy + 0.5 - h / 2, xx + 0.5 - w / 2)
    edge = np.clip(min(h, w) / 2 - 1.0 - r, 0.0, 1.0).astype(np.float32)  # 1-voxel soft edge
    return mu * edge


def detector_optics(proj: np.ndarray, cfg: ImagingConfig) -> np.ndarray:
    """Detector blur and Zernike halo on projections ``(angles, rows, cols)`` (linear in ``proj``)."""
    if cfg.detector_blur_px > 0:
        proj = ndimage.gaussian_filter(proj, (0, cfg.detector_blur_px, cfg.detector_blur_px))
    if cfg.halo_strength:
        low = ndimage.gaussian_filter(proj, (0, cfg.halo_sigma_px, cfg.halo_sigma_px))
        proj = proj + np.float32(cfg.halo_strength) * (proj - low)
    return proj


def beam_hardening(proj: np.ndarray, cupping: float) -> np.ndarray:
    """Beam hardening of a polychromatic beam: long paths attenuate less than ``exp(-p)`` says.

    So the measured line integrals bend down, ``p - cupping * p**2 / max(p)``; FBP turns this
    into a cupped (darker centre) volume. ``proj (angles, rows, cols)``, ``cupping >= 0``
    (0: unchanged).
    """
    if not cupping:
        return proj
    scale = np.float32(cupping / max(float(proj.max()), 1e-6))
    return proj - scale * proj * np.abs(proj)


def intensity_field(shape: tuple[int, ...], strength: float, sigma_px: float,
                    rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field, float32 of ``shape`` (uneven illumination).

    The field is ``exp(strength * n)`` (``n`` a unit-variance Gaussian random field of
    correlation length ~``sigma_px``).
    """
    factor = max(1, int(sigma_px // 4))
    coarse = tuple(-(-s // factor) + 2 for s in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), sigma_px / factor)
    if factor > 1:
        field = ndimage.zoom(field, factor, order=1)
    field = field[tuple(slice(0, s) for s in shape)]
    field = (field - field.mean()) / (field.std() + 1e-12)
    return np.exp(np.float32(strength) * field).astype(np.float32)


def apply_gamma(volume: np.ndarray, gamma: float) -> np.ndarray:
    """Gamma on the grey range; ``gamma = 1`` returns ``volume``.

    ``lo + (hi - lo) * t ** gamma`` with ``t`` the value mapped to [0, 1] between the 0.5 and
    99.5 percentiles (clipped).
    """
    if gamma == 1:
        return volume
    lo, hi = np.percentile(volume[:: max(1, volume.shape[0] // 16)], [0.5, 99.5])
    t = np.clip((volume - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return (lo + (hi - lo) * t ** np.float32(gamma)).astype(np.float32)


def measure_line_integrals(
    proj: np.ndarray, photons: float | None, gain: np.ndarray | float, rng: np.random.Generator
) -> np.ndarray:
    """Measured line integrals (float32) of projections ``proj``; ``photons=None``: noiseless.

    Poisson counts at ``photons`` per pixel (flat field) with detector ``gain`` errors, then
    flat-field and ``-log`` → measured line integrals float32.
    """
    if photons is None:
        return np.asarray(proj, np.float32)
    counts = rng.poisson(photons * gain * np.exp(-proj.astype(np.float64)))
    return -np.log(np.maximum(counts, 0.5) / photons).astype(np.float32)


@functools.lru_cache(maxsize=1)
def _projector(h: int, w: int, n_angles: int) -> ParallelBeamProjector:
    """Projector for a padded slice; kept between calls so that several volumes share weights."""
    theta = np.linspace(0.0, np.pi, n_angles, endpoint=False)
    return ParallelBeamProjector((h, w), theta, n_det=w)


def simulate_tomography(
    labels: np.ndarray, cfg: ImagingConfig, seed: int, progress: bool = False
) -> np.ndarray:
    """Reconstructed TXM-like grey volume ``(z, y, x)`` float32 for a label volume (same shape)."""
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (z, y, x), got shape {labels.shape}")
    rng = np.random.default_rng(seed)
    nz, ny, nx = labels.shape
    pad = _pad_for_cylinder(ny, nx) if cfg.pad_px is None else int(cfg.pad_px)
    mu = _sample(labels, cfg, pad, seed)
    h, w = mu.shape[1:]
    op = _projector(h, w, cfg.n_angles)
    chunks = [slice(z, min(z + cfg.chunk_slices, nz)) for z in range(0, nz, cfg.chunk_slices)]
    bar = tqdm(total=2 * len(chunks), desc="simulate TXM", disable=not progress, leave=False)
    proj = np.empty((cfg.n_angles, nz, w), np.float32)  # tomopy order (angles, rows, cols)
    with torch.no_grad():
        for sl in chunks:
            proj[:, sl] = op(torch.from_numpy(mu[sl])).numpy().transpose(1, 0, 2)
            bar.update()
        proj = detector_optics(proj, cfg)
        gain = 1.0 + cfg.ring_strength * rng.standard_normal((1, nz, w))
        proj = measure_line_integrals(proj, cfg.photons, gain, rng)
        proj = beam_hardening(proj, cfg.cupping)
        out = np.empty(labels.shape, np.float32)
        for sl in chunks:
            sino = torch.from_numpy(np.ascontiguousarray(proj[:, sl].transpose(1, 0, 2)))
            rec = fbp(sino, op, cfg.filter_name).numpy()
            out[sl] = rec[:, pad:pad + ny, pad:pad + nx]
            bar.update()
    bar.close()
    if cfg.field_strength > 0:
        out *= intensity_field(out.shape, cfg.field_strength, cfg.field_sigma_px, rng)
    return apply_gamma(out, cfg.gamma)
