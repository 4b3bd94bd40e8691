"""Domain randomisation: every synthetic volume draws its microstructure and imaging from ranges.

A network trained on one fixed simulator setting learns that setting's grey values; one trained
on volumes whose contrast, noise, blur, halo, rings, streaks, cupping, illumination and gamma
(and particle sizes, shapes, CBD and cracks) all vary learns the geometry instead (the idea of
SynthSeg in medical imaging). :class:`DomainRandomization` holds ``[low, high]`` ranges for
fields of :class:`~src.simulation.microstructure.MicrostructureConfig` and
:class:`~src.simulation.imaging.ImagingConfig`, plus three contrast keys:

- ``nmc_attenuation``: NMC attenuation (1/voxel);
- ``pore_to_nmc``: pore attenuation as a fraction of NMC's;
- ``cbd_contrast``: CBD's place between pore (0) and NMC (1); below 0 CBD is darker than pore,
  above 1 brighter than NMC (Zernike phase contrast can do both).

:meth:`DomainRandomization.draw` maps a seed to one setting, always the same for the same seed
(so volumes can be cached by seed and regenerated exactly).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from src.simulation.imaging import ImagingConfig
from src.simulation.microstructure import MicrostructureConfig

__all__ = ["CONTRAST_KEYS", "DomainRandomization", "RandomizationError"]

#: imaging keys that set the per-phase attenuation (NMC, CBD, pore) together
CONTRAST_KEYS: tuple[str, ...] = ("nmc_attenuation", "pore_to_nmc", "cbd_contrast")
_NON_NEGATIVE = {"photons", "detector_blur_px", "halo_sigma_px", "ring_strength", "cupping",
                 "field_strength", "field_sigma_px", "gamma", "n_angles", "nmc_attenuation",
                 "pore_to_nmc", "voxel_size_nm", "radius_median_nm", "radius_sigma",
                 "radius_min_nm", "cracked_fraction", "crack_width_vox", "cbd_bridge_nm",
                 "cbd_texture_nm", "cbd_texture_strength", "cbd_patch_nm", "cbd_patch_strength",
                 "nmc_fraction", "cbd_fraction", "overlap_max", "contact_probability",
                 "ellipsoid_aspect_max", "cracks_max", "nmc_density_std", "cbd_density_std",
                 "density_sigma_px"}
#: drawn uniformly in log space by default (scale parameters)
DEFAULT_LOG_UNIFORM: tuple[str, ...] = ("photons", "gamma", "voxel_size_nm", "radius_median_nm")


class RandomizationError(ValueError):
    """A randomisation range that cannot be drawn from (the message names the key)."""


def _fields(cls: type) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _check_ranges(ranges: Mapping[str, Any], group: str, allowed: set[str], prefix: str) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    for key, value in dict(ranges or {}).items():
        name = f"{prefix}{group}.{key}"
        if key not in allowed:
            raise RandomizationError(f"{name}: unknown key; expected one of {sorted(allowed)}")
        if isinstance(value, int | float):
            value = (value, value)
        if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 2:
            raise RandomizationError(f"{name}: expected a range [low, high], got {value!r}")
        try:
            low, high = float(value[0]), float(value[1])
        except (TypeError, ValueError) as err:
            raise RandomizationError(f"{name}: range bounds must be numbers, got {value!r}") from err
        if not (math.isfinite(low) and math.isfinite(high)):
            raise RandomizationError(f"{name}: range bounds must be finite, got [{low}, {high}]")
        if low > high:
            raise RandomizationError(f"{name}: range low {low} > high {high}")
        if key in _NON_NEGATIVE and low < 0:
            raise RandomizationError(f"{name}: must not be negative, got low {low}")
        if key == "photons" and low <= 0:
            raise RandomizationError(f"{name}: photon count must be > 0, got low {low}")
        out[key] = (low, high)
    return out


@dataclass
class DomainRandomization:
    """Ranges ``[low, high]`` per parameter; :meth:`draw` gives one volume's setting.

    Args:
        imaging: ranges for :class:`~src.simulation.imaging.ImagingConfig` fields and
            :data:`CONTRAST_KEYS`; ``n_angles`` is rounded to an integer.
        microstructure: ranges for :class:`~src.simulation.microstructure.MicrostructureConfig`
            fields (not ``shape``); integer fields are rounded.
        log_uniform: keys drawn uniformly in log space (scale parameters); their low must be > 0.
        key_prefix: prepended to key names in error messages (where the ranges live in the config).

    Raises:
        RandomizationError: an unknown key, a range with low > high, a negative bound where the
            parameter cannot be negative, or a photon count <= 0; the message names the key.
    """

    imaging: Mapping[str, Any] = field(default_factory=dict)
    microstructure: Mapping[str, Any] = field(default_factory=dict)
    log_uniform: Sequence[str] = DEFAULT_LOG_UNIFORM
    key_prefix: str = "data.prepare.randomization."

    def __post_init__(self) -> None:
        imaging_keys = (_fields(ImagingConfig) - {"attenuation", "filter_name", "pad_px", "chunk_slices"}) | set(CONTRAST_KEYS)
        micro_keys = _fields(MicrostructureConfig) - {"shape"}
        self.imaging = _check_ranges(self.imaging, "imaging", imaging_keys, self.key_prefix)
        self.microstructure = _check_ranges(self.microstructure, "microstructure", micro_keys, self.key_prefix)
        self.log_uniform = tuple(self.log_uniform)
        for group, ranges in (("imaging", self.imaging), ("microstructure", self.microstructure)):
            for key in set(self.log_uniform) & set(ranges):
                if ranges[key][0] <= 0:
                    raise RandomizationError(
                        f"{self.key_prefix}{group}.{key}: drawn log-uniformly, so low must be > 0, "
                        f"got {ranges[key][0]}")
        if any(k in self.imaging for k in CONTRAST_KEYS) and not all(k in self.imaging for k in CONTRAST_KEYS):
            missing = [k for k in CONTRAST_KEYS if k not in self.imaging]
            raise RandomizationError(f"{self.key_prefix}imaging: the contrast keys go together; missing {missing}")

    def _value(self, rng: np.random.Generator, key: str, low: float, high: float) -> float:
        if low == high:
            return low
        if key in self.log_uniform:
            return float(math.exp(rng.uniform(math.log(low), math.log(high))))
        return float(rng.uniform(low, high))

    def draw(self, seed: int, imaging: Mapping[str, Any] | None = None,
             microstructure: Mapping[str, Any] | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
        """One setting for volume ``seed``: ``(microstructure_kwargs, imaging_kwargs)``.

        Args:
            seed: the volume's seed; the same seed always gives the same setting.
            imaging: fixed ``ImagingConfig`` values the drawn ones are laid over.
            microstructure: fixed ``MicrostructureConfig`` values the drawn ones are laid over.

        Returns:
            Keyword arguments of ``MicrostructureConfig`` (without ``shape``) and
            ``ImagingConfig``, plain floats/ints/tuples (JSON-friendly).
        """
        rng = np.random.default_rng([int(seed), 19_0719])  # own stream: independent of generation
        micro = dict(microstructure or {})
        int_micro = {f.name for f in dataclasses.fields(MicrostructureConfig) if f.type in ("int", int)}
        for key in sorted(self.microstructure):
            value = self._value(rng, key, *self.microstructure[key])
            micro[key] = int(round(value)) if key in int_micro else value
        if "nmc_fraction" in micro or "cbd_fraction" in micro:  # keep pore > 5 %
            nmc = micro.get("nmc_fraction", MicrostructureConfig.nmc_fraction)
            cbd = micro.get("cbd_fraction", MicrostructureConfig.cbd_fraction)
            if nmc + cbd > 0.95:
                micro["cbd_fraction"] = max(0.0, 0.95 - nmc)
        img = dict(imaging or {})
        drawn = {key: self._value(rng, key, *self.imaging[key]) for key in sorted(self.imaging)}
        if "n_angles" in drawn:
            drawn["n_angles"] = max(2, int(round(drawn["n_angles"])))
        if all(k in drawn for k in CONTRAST_KEYS):
            mu_nmc = drawn.pop("nmc_attenuation")
            mu_pore = mu_nmc * drawn.pop("pore_to_nmc")
            mu_cbd = mu_pore + drawn.pop("cbd_contrast") * (mu_nmc - mu_pore)
            img["attenuation"] = (mu_nmc, mu_cbd, mu_pore)  # CBD may go below 0: phase contrast
        img.update(drawn)
        return micro, img

    def configs(self, seed: int, shape: Sequence[int], imaging: Mapping[str, Any] | None = None,
                microstructure: Mapping[str, Any] | None = None) -> tuple[MicrostructureConfig, ImagingConfig]:
        """:meth:`draw` turned into the two config objects for a volume of ``shape`` (z, y, x)."""
        micro, img = self.draw(seed, imaging, microstructure)
        return MicrostructureConfig(shape=tuple(int(s) for s in shape), **micro), ImagingConfig(**img)
