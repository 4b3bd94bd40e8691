"""Cross-checks of our operator and FBP against ASTRA (2D CPU) and the tomopy backend switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.recon import ParallelBeamProjector, project, recon
from src.recon.backends import astra_available, tomopy_available
from tests.helpers import SHARED_DATA

TOMOPY_REF = SHARED_DATA / "tomopy-reference"
needs_astra = pytest.mark.skipif(not astra_available(),
                                 reason="astra-toolbox not importable (pip install astra-toolbox)")


def _phantom(n: int) -> np.ndarray:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return resize(shepp_logan_phantom(), (n, n), anti_aliasing=True).astype(np.float32)


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _psnr(x: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(np.ptp(ref) ** 2 / np.mean((x - ref) ** 2)))


@needs_astra
@pytest.mark.parametrize(("shape", "n_det", "center"),
                         [((64, 64), 64, None), ((40, 56), 75, 35.3), ((48, 48), 60, 26.0)])
def test_forward_and_adjoint_match_astra(shape, n_det, center) -> None:
    from src.recon.backends import astra_backproject, astra_project

    rng = np.random.default_rng(0)
    img = rng.random((2, *shape)).astype(np.float32)
    theta = np.linspace(0, np.pi, 45, endpoint=False) + 0.05
    op = ParallelBeamProjector(shape, theta, n_det=n_det, center=center)
    ours = op(torch.from_numpy(img)).numpy()
    theirs = astra_project(img, theta, n_det, center, projector_type="strip")
    assert _rel(ours, theirs) < 0.02, _rel(ours, theirs)  # seen < 0.01 (strip), ~0.01 (linear)
    sino = rng.random((2, 45, n_det)).astype(np.float32)
    back = op.adjoint(torch.from_numpy(sino)).numpy()
    assert _rel(back, astra_backproject(sino, theta, shape, center, "strip")) < 0.02


@needs_astra
def test_fbp_matches_astra_on_shepp_logan() -> None:
    n = 256
    ph = _phantom(n)
    theta = np.linspace(0, np.pi, 180, endpoint=False)
    tomo = project(ph[None], theta, pad=False)
    ours = recon(tomo, theta)[0]
    theirs = recon(tomo, theta, backend="astra")[0]
    corr = np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]
    d_psnr = _psnr(ours, ph) - _psnr(theirs, ph)
    print(f"FBP 256^2/180: PSNR ours {_psnr(ours, ph):.2f}, ASTRA {_psnr(theirs, ph):.2f}, "
          f"corr {corr:.5f}")
    assert corr > 0.99 and d_psnr > -0.5


@needs_astra
def test_astra_backend_iterative_and_centre() -> None:
    ph = _phantom(48)
    theta = np.linspace(0, np.pi, 60, endpoint=False)
    tomo = project(np.stack([ph, ph.T]), theta, n_det=56, center=29.5)
    for alg, n_iter in (("sirt", 50), ("cgls", 15)):
        ours = recon(tomo, theta, center=29.5, algorithm=alg, num_iter=n_iter)
        theirs = recon(tomo, theta, center=29.5, algorithm=alg, num_iter=n_iter,
                       backend="astra")
        assert theirs.shape == (2, 56, 56)
        corr = np.corrcoef(ours.ravel(), theirs.ravel())[0, 1]
        assert corr > 0.99, (alg, corr)
    with pytest.raises(ValueError, match="ASTRA"):
        recon(tomo, theta, algorithm="tv", backend="astra")


@needs_astra
@pytest.mark.parametrize(("ref_name", "algorithm", "kw"),
                         [("gridrec_shepp", "fbp", {"filter_name": "shepp-logan"}),
                          ("sirt", "sirt", {"num_iter": 4})])
def test_astra_vs_tomopy_reference(ref_name: str, algorithm: str, kw: dict) -> None:
    if not TOMOPY_REF.is_dir():
        pytest.skip(f"tomopy reference data not found at {TOMOPY_REF}")
    proj, theta = np.load(TOMOPY_REF / "proj.npy"), np.load(TOMOPY_REF / "angle.npy")
    ref = np.load(TOMOPY_REF / f"{ref_name}.npy")
    theirs = recon(proj, theta, algorithm=algorithm, backend="astra", **kw)
    corr = np.corrcoef(ref.ravel(), theirs.ravel())[0, 1]
    assert corr > 0.96  # seen gridrec_shepp 0.969, sirt 0.9986


def test_tomopy_backend_or_clear_error() -> None:
    tomo = np.ones((8, 1, 16), np.float32)
    theta = np.linspace(0, np.pi, 8, endpoint=False)
    if tomopy_available():
        assert recon(tomo, theta, backend="tomopy").shape == (1, 16, 16)
    else:
        with pytest.raises(ImportError, match="conda"):
            recon(tomo, theta, backend="tomopy")
