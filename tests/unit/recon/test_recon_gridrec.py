"""Gridrec (NUFFT Fourier reconstruction): same geometry, centre and scale as our FBP, sharper."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.recon.fbp import fbp, recon
from src.recon.operators import ParallelBeamProjector

pytest.importorskip("finufft", reason="gridrec needs finufft (the recon extra)")

from src.recon.gridrec import gridrec  # noqa: E402


def _phantom(n: int) -> np.ndarray:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return resize(shepp_logan_phantom(), (n, n), anti_aliasing=True).astype(np.float32)


def _inside(n: int) -> np.ndarray:
    yy, xx = np.mgrid[:n, :n] + 0.5 - n / 2
    return xx**2 + yy**2 < (0.45 * n) ** 2


@pytest.mark.parametrize(("n", "n_angles", "center", "filter_name"),
                         [(64, 90, None, "ramp"), (64, 90, 29.3, "hann"), (63, 60, 33.7, "ramp")])
def test_matches_fbp_and_the_phantom(n, n_angles, center, filter_name):
    img = _phantom(n)
    theta = np.linspace(0, np.pi, n_angles, endpoint=False)
    op = ParallelBeamProjector((n, n), theta, n_det=n, center=n / 2 if center is None else center)
    sino = op(torch.from_numpy(img)[None])
    ref = fbp(sino, op, filter_name)[0].numpy()
    rec = gridrec(sino.numpy(), theta, center=center, filter_name=filter_name)[0]
    assert rec.shape == (n, n) and rec.dtype == np.float32
    m = _inside(n)
    assert np.corrcoef(rec[m], ref[m])[0, 1] > 0.99  # same geometry, centre and filter
    assert abs(rec[m].mean() / ref[m].mean() - 1) < 0.01  # same scale (attenuation per pixel)
    err_g = np.linalg.norm(rec[m] - img[m]) / np.linalg.norm(img[m])
    err_f = np.linalg.norm(ref[m] - img[m]) / np.linalg.norm(img[m])
    assert err_g < 1.05 * err_f, (err_g, err_f)  # exact interpolation: no worse than FBP's
    # a wrong centre is visible: the convention is the operator's
    off = gridrec(sino.numpy(), theta, center=op.center + 2, filter_name=filter_name)[0]
    assert np.linalg.norm(off[m] - img[m]) > 1.5 * np.linalg.norm(rec[m] - img[m])


def test_recon_gridrec_per_row_centres_in_one_plan():
    n, theta = 48, np.linspace(0, np.pi, 72, endpoint=False)
    img = _phantom(n)
    centers = [24.0, 22.5, 25.25]
    tomo = np.stack([ParallelBeamProjector((n, n), theta, n_det=n, center=c)(
        torch.from_numpy(img)[None])[0].numpy() for c in centers], axis=1)  # (angles, 3, n)
    vol = recon(tomo, theta, center=centers, algorithm="gridrec", chunk=2)
    assert vol.shape == (3, n, n)
    for r, c in enumerate(centers):
        one = gridrec(tomo[:, r], theta, center=c)[0]
        np.testing.assert_allclose(vol[r], one, atol=2e-3 * float(np.abs(one).max()))
        assert np.corrcoef(vol[r][_inside(n)], img[_inside(n)])[0, 1] > 0.97
    with pytest.raises(ValueError, match="gridrec runs on the CPU"):
        recon(tomo, theta, algorithm="gridrec", device="cuda")
    with pytest.raises(ValueError, match="theta has 71 angles, the sinograms 72"):
        gridrec(tomo.transpose(1, 0, 2), theta[:-1])
