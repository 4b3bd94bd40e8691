"""Tomographic reconstruction: operators, FBP, iterative solvers and external backends.

Parallel-beam operators, FBP, iterative solvers, preprocessing, rotation-centre finding and
external backends (ASTRA, tomopy), with tomopy-like helpers.
"""

from src.recon.centre import find_center, find_center_pc, find_center_vo
from src.recon.fbp import (
    ALGORITHMS,
    BACKENDS,
    FILTERS,
    check_projections,
    fbp,
    filter_response,
    filter_sinogram,
    recon,
)
from src.recon.iterative import cgls, operator_norm, sirt, tv_pdhg
from src.recon.operators import (
    ParallelBeamProjector,
    backproject,
    numba_available,
    project,
    tomopy_detector_width,
)
from src.recon.preprocessing import (
    minus_log,
    normalize,
    remove_outliers,
    remove_stripe_fw,
    remove_stripe_sorting,
    retrieve_phase,
)

__all__ = [
    "ALGORITHMS",
    "BACKENDS",
    "FILTERS",
    "ParallelBeamProjector",
    "backproject",
    "cgls",
    "check_projections",
    "fbp",
    "filter_response",
    "filter_sinogram",
    "find_center",
    "find_center_pc",
    "find_center_vo",
    "minus_log",
    "normalize",
    "numba_available",
    "operator_norm",
    "project",
    "recon",
    "remove_outliers",
    "remove_stripe_fw",
    "remove_stripe_sorting",
    "retrieve_phase",
    "sirt",
    "tomopy_detector_width",
    "tv_pdhg",
]
