"""Bounded-memory whole-volume prediction: ``tiling.max_memory`` plans the slice batch and exact
2D tiles (labels identical to the unbounded path); sizes, the measured activation model."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import zarr

import src.inference.tiled as tiled
from src.data.io import write_tiff
from src.inference.memory import parse_bytes, peak_extra_memory, resolve_max_memory, rss_anon
from src.inference.tiled import ACTIVATION_SAFETY, TiledPredictor
from src.inference.volume_prediction import predict_volume
from src.models.nets.lrcsnet import LRCSNet
from src.models.nets.unet import UNet
from src.models.segmentation import SegmentationModule
from tests.helpers import compose

BPP = 100.0  # bytes per pixel of the fixed activation model in the deterministic tests


def test_sizes_and_auto():
    assert parse_bytes("2GB") == 2 * 10**9 and parse_bytes("1.5GiB") == 3 * 2**29
    assert parse_bytes("512MB") == 512 * 10**6 and parse_bytes("4e9") == 4 * 10**9 and parse_bytes(1000) == 1000
    with pytest.raises(ValueError, match="memory size"):
        parse_bytes("2 gigs")
    assert resolve_max_memory(None) is None
    assert resolve_max_memory("auto") > rss_anon() > 0
    with pytest.raises(ValueError, match="'lots' as a memory size"):
        TiledPredictor(LRCSNet(base_filters=2), 2, 8, max_memory="lots")


def bounded(net, m: int, image_shape, budget_fraction: float, chunk=None, probabilities=False, monkeypatch=None,
            halo_of: TiledPredictor | None = None, **kw) -> TiledPredictor:
    """A predictor whose plan sees a process of no base memory, activations of BPP bytes per
    pixel and max_memory = its pipeline buffers + ``budget_fraction`` of one whole tile's
    activations: deterministic, whatever else the test process holds."""
    monkeypatch.setattr(tiled, "rss_anon", lambda: 0)
    probe = TiledPredictor(net, 2, m, chunk=chunk, **kw)
    probe._exact_halo = halo_of._net_halo() if halo_of is not None else None  # measured once per test
    grid = probe.grid(image_shape)
    _, ty, tx = probe.tile_shape(grid)
    limit = probe.pipeline_bytes(grid, 4, 3 if probabilities else 0) + budget_fraction * ty * tx * BPP * ACTIVATION_SAFETY
    predictor = TiledPredictor(net, 2, m, chunk=chunk, max_memory=int(limit), **kw)
    predictor._bytes_per_pixel = {False: (BPP, 3), True: (BPP, 3)}
    predictor._exact_halo = probe._net_halo()
    return predictor


@pytest.mark.parametrize(("net", "m"), [
    (LRCSNet(base_filters=4), 8),                   # max-unpool indices: tile origins on multiples of 8
    (UNet(2, num_classes=3, base_filters=4, depth=3), 8),
    (UNet(2, num_classes=3, base_filters=4, depth=4), 16),
])
@pytest.mark.parametrize("chunk", [(2, None, None), (1, 96, 112)])  # whole slices; in-plane chunks with halos
def test_small_max_memory_tiles_slices_with_identical_labels(net, m, chunk, monkeypatch):
    torch.manual_seed(0)
    net.eval()
    image = np.random.default_rng(0).random((2, 301, 333)).astype(np.float32)
    whole = TiledPredictor(net, 2, m, chunk=chunk)
    ref = predict_volume(whole, image, value_range=(0, 1), save_probabilities=True, progress=False)
    predictor = bounded(net, m, image.shape, 0.7, chunk, probabilities=True, monkeypatch=monkeypatch, halo_of=whole)
    plan = predictor.plan(predictor.grid(image.shape), 4, True)
    assert plan.batch == 1 and plan.tiles[0] * plan.tiles[1] > 1, plan
    assert all(c % m == 0 for c in plan.core) and plan.halo[0] >= predictor._net_halo()[0]
    assert plan.est_peak <= plan.limit
    out = predict_volume(predictor, image, value_range=(0, 1), save_probabilities=True, progress=False)
    np.testing.assert_array_equal(out.labels, ref.labels)
    np.testing.assert_allclose(out.probabilities, ref.probabilities, atol=1e-6)


def test_default_lrcsnet_tiles_are_bit_identical():
    """The default LRCS-Net (C = 32) with odd-sized tiles of an odd-sized slice."""
    torch.manual_seed(0)
    net = LRCSNet().eval()
    image = np.random.default_rng(1).random((1, 203, 229)).astype(np.float32)
    whole = TiledPredictor(net, 2, 8)
    ref = whole.predict(image, progress=False)
    grid = whole.grid(image.shape)
    whole._plans[(grid, 4, False)] = tiled.TilingPlan(1, (3, 2), (72, 120), tuple(whole._net_halo()))
    np.testing.assert_array_equal(whole.predict(image, progress=False), ref)


def test_the_plan_keeps_the_batch_when_it_fits_and_lowers_it_first(monkeypatch):
    net = LRCSNet(base_filters=2).eval()
    shape = (8, 64, 80)
    roomy = bounded(net, 8, shape, 100, batch_size=4, monkeypatch=monkeypatch).plan(TiledPredictor(net, 2, 8).grid(shape))
    assert (roomy.batch, roomy.tiles) == (4, (1, 1))
    two = bounded(net, 8, shape, 2.5, batch_size=4, monkeypatch=monkeypatch)
    assert (two.plan(two.grid(shape)).batch, two.plan(two.grid(shape)).tiles) == (2, (1, 1))
    assert "batch 2 slices, whole tiles" in two.plan(two.grid(shape)).describe()
    unbounded = TiledPredictor(net, 2, 8, batch_size=3).plan(TiledPredictor(net, 2, 8).grid(shape))
    assert (unbounded.batch, unbounded.tiles, unbounded.limit) == (3, (1, 1), None)


def test_measured_activation_memory_is_plausible():
    torch.manual_seed(0)
    small, large = (TiledPredictor(LRCSNet(base_filters=c).eval(), 2, 8) for c in (4, 16))
    bpp_small, n_classes = small.activation_bytes_per_pixel(False)
    bpp_large, _ = large.activation_bytes_per_pixel(False)
    assert n_classes == 3
    # at least the full-resolution input, the 2C-channel encoder output and the logits (float32)
    assert bpp_small >= 4 * (1 + 8 + 3) and bpp_large > 2 * bpp_small
    assert peak_extra_memory(lambda: torch.ones(4 * 2**20).sum(), torch.device("cpu")) >= 8 * 2**20


def test_predict_cli_logs_its_tiling_and_matches_the_unbounded_labels(tmp_path, caplog):
    import predict

    torch.manual_seed(0)
    module = SegmentationModule(net={"_target_": "src.models.nets.lrcsnet.LRCSNet", "num_classes": 3, "base_filters": 4},
                                class_names=["NMC", "CBD", "pore"], name="lrcsnet")
    ckpt = tmp_path / "net.ckpt"
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, ckpt)
    image = (np.random.default_rng(2).random((4, 120, 136)) * 60000).astype(np.uint16)
    write_tiff(tmp_path / "vol.tif", image)

    def run(name: str, *overrides: str) -> np.ndarray:
        cfg = compose("predict", [f"ckpt_path={ckpt}", f"input={tmp_path / 'vol.tif'}", f"output={tmp_path / name}",
                                  "progress=false", *overrides])
        predict.predict(cfg)
        return zarr.open_group(str(tmp_path / name), mode="r")["labels"][:]

    with caplog.at_level(logging.INFO, logger="src.inference.volume_prediction"):
        bounded_labels = run("bounded.zarr", f"tiling.max_memory={rss_anon() + 2 * 10**6}")
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("tiling:")]
    assert lines and "tiles" in lines[0] and "max_memory" in lines[0] and "B/pixel" in lines[0], lines
    np.testing.assert_array_equal(bounded_labels, run("free.zarr", "tiling.max_memory=null"))
