"""Sliding-window prediction equals direct per-pixel prediction on any image size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from src.inference.sliding_window import SlidingWindowPredictor
from src.models.nets.lrcsnet import LRCSNet


class PointwiseNet(nn.Module):
    """Logits (x, 0.5, 1 - x) per pixel: labels 0 where x > 0.5, 2 where x < 0.5."""

    def __init__(self, spatial_dims: int) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, torch.full_like(x, 0.5), 1 - x], 1) * 10


def expected_labels(image: np.ndarray) -> np.ndarray:
    return np.stack([image, np.full_like(image, 0.5), 1 - image]).argmax(0)


@pytest.mark.parametrize(("shape", "dims"), [((37, 53), 2), ((5, 29, 41), 2), ((19, 23, 21), 3)])
def test_sliding_window_exact_for_pointwise_net(shape, dims):
    image = np.random.default_rng(0).random(shape).astype(np.float32)
    predictor = SlidingWindowPredictor(PointwiseNet(dims), dims, size_multiple=8, roi_size=16, overlap=0.5, slice_batch=2)
    seg = predictor.predict(image, progress=False)
    assert seg.shape == shape and seg.dtype == np.uint8
    np.testing.assert_array_equal(seg, expected_labels(image))


def test_lrcsnet_any_size_and_probability_callback():
    torch.manual_seed(0)
    net = LRCSNet(base_filters=4)
    image = np.random.default_rng(1).random((3, 30, 45)).astype(np.float32)
    chunks = []
    predictor = SlidingWindowPredictor(net, 2, size_multiple=8, roi_size=32, slice_batch=2)
    seg = predictor.predict(image, on_probabilities=lambda z, p: chunks.append((z, p)), progress=False)
    assert seg.shape == image.shape
    assert [c[0] for c in chunks] == [slice(0, 2), slice(2, 3)]
    probs = np.concatenate([c[1] for c in chunks], axis=1)
    assert probs.shape == (3, 3, 30, 45)
    np.testing.assert_array_equal(probs.argmax(0), seg)


def test_rejects_images_of_wrong_rank():
    with pytest.raises(ValueError, match="cannot predict a 2D image"):
        SlidingWindowPredictor(PointwiseNet(3), 3).predict(np.zeros((8, 8), np.float32))


@pytest.mark.parametrize(("shape", "dims", "axes"), [((37, 53), 2, (0,)), ((9, 29, 21), 2, (0, 1, 2)), ((19, 23, 21), 3, (0,))])
def test_tta_and_orthogonal_planes_exact_for_pointwise_net(shape, dims, axes):
    image = np.random.default_rng(2).random(shape).astype(np.float32)
    predictor = SlidingWindowPredictor(PointwiseNet(dims), dims, size_multiple=8, roi_size=16, overlap=0.5,
                                       slice_batch=4, tta=True, slice_axes=axes)
    np.testing.assert_array_equal(predictor.predict(image, progress=False), expected_labels(image))


def _probs(predictor, image):
    out = []
    predictor.predict(image, on_probabilities=lambda z, p: out.append(p), progress=False)
    return np.concatenate(out, axis=1) if len(out) > 1 else out[0]


def test_tta_averages_the_eight_dihedral_predictions():
    torch.manual_seed(0)
    net = LRCSNet(base_filters=4).eval()
    image = np.random.default_rng(3).random((32, 32)).astype(np.float32)
    probs = _probs(SlidingWindowPredictor(net, 2, size_multiple=8, roi_size=32, tta=True), image)
    x = torch.from_numpy(image)[None, None]
    manual = torch.zeros(1, 3, 32, 32)
    with torch.no_grad():
        for k in range(4):
            for flip in (False, True):
                t = torch.rot90(x, k, dims=(-2, -1))
                t = torch.flip(t, dims=(-1,)) if flip else t
                p = torch.softmax(net(t), 1)
                p = torch.flip(p, dims=(-1,)) if flip else p
                manual += torch.rot90(p, -k, dims=(-2, -1))
    np.testing.assert_allclose(probs, (manual / 8)[0].numpy(), atol=1e-5)


def test_orthogonal_ensemble_is_the_mean_of_the_three_axes():
    torch.manual_seed(1)
    net = LRCSNet(base_filters=4).eval()
    image = np.random.default_rng(4).random((16, 24, 32)).astype(np.float32)
    single = [_probs(SlidingWindowPredictor(net, 2, size_multiple=8, roi_size=32, slice_axes=(a,)), image)
              for a in (0, 1, 2)]
    assert all(p.shape == (3, 16, 24, 32) for p in single)
    ensemble = _probs(SlidingWindowPredictor(net, 2, size_multiple=8, roi_size=32, slice_axes=(0, 1, 2)), image)
    np.testing.assert_allclose(ensemble, np.mean(single, axis=0), atol=1e-5)
    with pytest.raises(ValueError, match="slice_axes"):
        SlidingWindowPredictor(net, 2, slice_axes=(3,))
