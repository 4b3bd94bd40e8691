"""XANES chemical-state maps:
``python xanes.py input=STACK energies=FILE [mask=SEG.tif] [ckpt_path=RUN/checkpoints/best.ckpt] output_dir=DIR``,
``python xanes.py input=SPECTRA.csv`` (point spectra) or ``python xanes.py series=MANIFEST [electrochem=CELL.mpt]``.

Reads and checks the inputs before any work; finds ``e0`` from the data and places the fit
windows inside the measured energies; optionally aligns the energies and applies a trained
denoiser or edge-energy net; fits every voxel (pre/post-edge normalisation, edge jump, half-jump
and steepest-slope edge energies, white line, linear-combination fit against the shipped,
given or data-derived end-members → SOC and oxidation state); separates particles and joins
their size, sphericity, CBD coverage, crack porosity and depth with their SOC; writes maps
(TIFF), tables (CSV), ``summary.json`` and figures (PNG) into ``output_dir``. The body is
:func:`src.inference.xanes_maps.run_xanes`.
"""

from __future__ import annotations

from typing import Any

from omegaconf import DictConfig

from src.cli import run_command
from src.xanes.pipeline import load_mask

__all__ = ["load_mask", "run_xanes"]


def run_xanes(cfg: DictConfig) -> dict[str, Any]:
    """The whole command; returns the summary (also written as ``summary.json``)."""
    from src.inference.xanes_maps import run_xanes as run

    return run(cfg)


if __name__ == "__main__":
    run_command("xanes", run_xanes)
