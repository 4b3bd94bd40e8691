"""Cached synthetic (grey image, label) volume pairs on disk, and a CLI to make them.

Each volume ``<name>`` is written as ``<name>_image.tif`` (float32), ``<name>_label.tif`` (uint8,
0 = NMC, 1 = CBD, 2 = pore) and ``<name>.json`` (seed, voxel size, fractions, all parameters,
software version, generation time). A call whose parameters match an existing JSON (and whose
TIFFs exist) returns the cached paths without regenerating.

CLI: ``python -m src.simulation.electrode_volumes --out data/synthetic --seeds 0 1 2 --shape 128 128 128``
"""

from __future__ import annotations

import argparse
import json
import time
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np

from src.data.io import to_jsonable, write_json, write_tiff
from src.simulation.imaging import ImagingConfig, simulate_tomography
from src.simulation.microstructure import (
    PHASES,
    MicrostructureConfig,
    generate_microstructure,
    phase_fractions,
)

__all__ = ["make_synthetic_volume", "main"]


def _version() -> str:
    try:
        return importlib_metadata.version("batteryct")
    except importlib_metadata.PackageNotFoundError:
        return "unknown"


def _params(seed: int, micro: MicrostructureConfig, imaging: ImagingConfig) -> dict[str, Any]:
    return {"seed": int(seed), "microstructure": to_jsonable(micro), "imaging": to_jsonable(imaging)}


def make_synthetic_volume(
    out_dir: Path | str,
    seed: int,
    micro: MicrostructureConfig,
    imaging: ImagingConfig,
    name: str | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Generate (or reuse) one synthetic volume; returns ``{"image", "label", "meta"}`` paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    name = name or f"synthetic_{'x'.join(map(str, micro.shape))}_seed{seed}"
    paths = {"image": out / f"{name}_image.tif", "label": out / f"{name}_label.tif",
             "meta": out / f"{name}.json"}
    params = _params(seed, micro, imaging)
    if all(p.exists() for p in paths.values()):
        try:
            cached = json.loads(paths["meta"].read_text())
        except (OSError, json.JSONDecodeError):
            cached = {}
        if cached.get("parameters") == params:
            return paths
    start = time.perf_counter()
    labels = generate_microstructure(micro, seed)
    image = simulate_tomography(labels, imaging, seed, progress=progress)
    elapsed = time.perf_counter() - start
    # the JSON goes last: its presence with matching parameters marks a complete volume
    write_tiff(paths["label"], labels)
    write_tiff(paths["image"], image.astype(np.float32, copy=False))
    meta = {
        "name": name,
        "seed": int(seed),
        "voxel_size_nm": micro.voxel_size_nm,
        "shape": list(labels.shape),
        "classes": list(PHASES),
        "target_fractions": {"NMC": micro.nmc_fraction, "CBD": micro.cbd_fraction,
                             "pore": 1.0 - micro.nmc_fraction - micro.cbd_fraction},
        "measured_fractions": phase_fractions(labels),
        "image_mean_per_phase": {p: float(image[labels == i].mean()) if (labels == i).any()
                                 else None for i, p in enumerate(PHASES)},
        "parameters": params,
        "software": {"package": "batteryct", "version": _version()},
        "generation_time_s": round(elapsed, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_json(paths["meta"], meta)
    return paths


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (see module docstring)."""
    parser = argparse.ArgumentParser(description="Generate cached synthetic nano-CT volumes.")
    parser.add_argument("--out", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--shape", type=int, nargs=3, default=[128, 128, 128],
                        metavar=("Z", "Y", "X"))
    parser.add_argument("--voxel-size-nm", type=float, default=MicrostructureConfig.voxel_size_nm)
    parser.add_argument("--nmc-fraction", type=float, default=MicrostructureConfig.nmc_fraction)
    parser.add_argument("--cbd-fraction", type=float, default=MicrostructureConfig.cbd_fraction)
    parser.add_argument("--photons", type=float, default=ImagingConfig.photons)
    parser.add_argument("--n-angles", type=int, default=ImagingConfig.n_angles)
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    micro = MicrostructureConfig(shape=tuple(args.shape), voxel_size_nm=args.voxel_size_nm,
                                 nmc_fraction=args.nmc_fraction, cbd_fraction=args.cbd_fraction)
    imaging = ImagingConfig(photons=args.photons, n_angles=args.n_angles)
    for seed in args.seeds:
        paths = make_synthetic_volume(args.out, seed, micro, imaging, progress=not args.quiet)
        print(f"seed {seed}: {paths['image']} {paths['label']}")


if __name__ == "__main__":
    main()
