"""Uncertainty outputs: predict_volume's out-of-core entropy volume (chunk by chunk, resumable)
and MC dropout in the sliding-window predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from src.analysis.uncertainty import predictive_entropy
from src.data.io import read_image
from src.inference.sliding_window import SlidingWindowPredictor
from src.inference.tiled import TiledPredictor
from src.inference.volume_prediction import predict_volume, uncertainty_path
from src.models.checkpoint import load_segmentation_checkpoint
from tests.helpers import write_segmentation_checkpoint


@pytest.fixture(scope="module")
def net(tmp_path_factory):
    ckpt = write_segmentation_checkpoint(tmp_path_factory.mktemp("c") / "c.ckpt", base_filters=4)
    module, _ = load_segmentation_checkpoint(ckpt)
    return module.net


@pytest.mark.parametrize("suffix", [".tif", ".zarr"])
def test_predict_volume_writes_entropy_chunk_by_chunk(net, tmp_path, suffix):
    rng = np.random.default_rng(0)
    vol = rng.random((6, 40, 36)).astype(np.float32)

    def predictor():
        return TiledPredictor(net, 2, 16, chunk=(2, None, None), device="cpu")

    memory = predict_volume(predictor(), vol, None, value_range=(0.0, 1.0), save_probabilities=True,
                            save_uncertainty=True, progress=False)
    expected = predictive_entropy(memory.probabilities)
    assert memory.uncertainty.shape == vol.shape
    np.testing.assert_allclose(memory.uncertainty, expected, rtol=1e-5, atol=1e-6)
    out = tmp_path / f"seg{suffix}"
    first = predict_volume(predictor(), vol, out, value_range=(0.0, 1.0), save_uncertainty=True, progress=False,
                           max_chunks=1)  # killed after one chunk: resumes
    assert not first.finished
    rest = predict_volume(predictor(), vol, out, value_range=(0.0, 1.0), save_uncertainty=True, progress=False)
    assert rest.finished and rest.skipped == 1
    path = uncertainty_path(out)
    if suffix == ".zarr":
        import zarr

        stored = np.asarray(zarr.open_group(str(path), mode="r")["labels"])
    else:
        stored = read_image(path)
    assert stored.dtype == np.uint8 and stored.shape == vol.shape
    np.testing.assert_allclose(stored, np.round(255 * expected / np.log(3)), atol=1)


def test_mc_dropout_needs_dropout_and_varies_passes():
    from src.models.nets.lrcsnet import LRCSNet

    torch.manual_seed(0)
    net = LRCSNet(base_filters=4, variant="deep", dropout=0.3)
    image = np.random.default_rng(1).random((32, 32)).astype(np.float32)
    with pytest.raises(ValueError, match="needs a net with dropout"):
        SlidingWindowPredictor(torch.nn.Conv2d(1, 3, 3, padding=1), 2, 16, roi_size=32, mc_samples=4)
    probs = []
    for _ in range(2):
        p = SlidingWindowPredictor(net, 2, 16, roi_size=32, mc_samples=3)
        parts = []
        p.predict(image, lambda _s, x, parts=parts: parts.append(x), progress=False)
        probs.append(parts[0])
    assert not np.allclose(probs[0], probs[1])  # dropout is sampled
    assert np.allclose(probs[0].sum(0), 1, atol=1e-5)
