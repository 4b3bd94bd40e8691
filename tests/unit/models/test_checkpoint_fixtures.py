"""Checkpoints written by the code before the layout refactor (issue 14) still load and predict
the same numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "checkpoints"


def _expected() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / "expected.npz"))


def test_segmentation_checkpoint_of_88a8ff0_loads_and_predicts():
    from src.models.checkpoint import checkpoint_kind, load_segmentation_checkpoint

    exp = _expected()
    assert checkpoint_kind(FIXTURES / "segmentation_lrcsnet.ckpt") == "segmentation"
    module, data = load_segmentation_checkpoint(FIXTURES / "segmentation_lrcsnet.ckpt", "lrcsnet")
    assert module.class_names == ["NMC", "CBD", "pore"] and data
    with torch.no_grad():
        out = module(torch.from_numpy(exp["x_seg"])).numpy()
    np.testing.assert_allclose(out, exp["y_seg"], rtol=1e-5, atol=1e-6)


def test_reconstruction_checkpoint_of_88a8ff0_loads_and_predicts():
    from src.models.checkpoint import checkpoint_kind
    from src.models.reconstruction import load_reconstruction_checkpoint

    exp = _expected()
    assert checkpoint_kind(FIXTURES / "reconstruction_fbpconvnet.ckpt") == "reconstruction"
    module, data = load_reconstruction_checkpoint(FIXTURES / "reconstruction_fbpconvnet.ckpt")
    assert data["n_angles"] == 16 and data["image_size"] == 32
    with torch.no_grad():
        out = module(torch.from_numpy(exp["x_rec"])).numpy()
    np.testing.assert_allclose(out, exp["y_rec"], rtol=1e-5, atol=1e-6)


def test_xanes_checkpoint_of_88a8ff0_loads_and_predicts():
    from src.models.spectral import XanesModule

    exp = _expected()
    module = XanesModule.load_from_checkpoint(FIXTURES / "xanes_edge.ckpt", map_location="cpu").eval()
    assert module.energies.size == exp["x_xan"].shape[1] == 15
    with torch.no_grad():
        out = module(torch.from_numpy(exp["x_xan"])).numpy()
    np.testing.assert_allclose(out, exp["y_xan"], rtol=1e-5, atol=1e-6)
