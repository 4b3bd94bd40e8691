"""Tomographic reconstruction: parallel-beam operators, FBP and tomopy-like helpers."""

from src.recon.fbp import FILTERS, fbp, filter_response, filter_sinogram, recon
from src.recon.operators import ParallelBeamProjector, project, tomopy_detector_width

__all__ = [
    "FILTERS",
    "ParallelBeamProjector",
    "fbp",
    "filter_response",
    "filter_sinogram",
    "project",
    "recon",
    "tomopy_detector_width",
]
