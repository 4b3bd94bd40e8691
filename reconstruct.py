"""Reconstruct a scan into a volume with one command:
``python reconstruct.py input=SCAN output=VOLUME.tif`` (everything else found in the file or by
itself), or with overrides ``[flat=FLATS dark=DARKS theta=ANGLES|even center=auto|scan|COLUMN
algorithm=fbp|gridrec|sirt|cgls|tv|learned ckpt_path=CKPT ...]``.

Data Exchange HDF5, Zeiss/Xradia TXRM/XRM, TIFF stacks / folders / ``.npy``; flats, darks and
angles from the file unless given; the centre found by itself (``center=auto``); the volume
written block by block, atomically and resumably, with its metadata and a PNG of the central
slices. The body is :func:`src.inference.scan_reconstruction.reconstruct_scan`; the keys are
those of ``conf/reconstruct.yaml``.
"""

from __future__ import annotations

import numpy as np
from omegaconf import DictConfig

from src.cli import run_command
from src.inference.scan_reconstruction import ReconstructionSettings, reconstruct_scan


def reconstruct(cfg: DictConfig) -> np.ndarray | None:
    """Reconstruct ``cfg.input`` into ``cfg.output``; return the volume (read-only), or None
    for ``center=scan``."""
    return reconstruct_scan(ReconstructionSettings.from_config(cfg))


if __name__ == "__main__":
    run_command("reconstruct", reconstruct)
