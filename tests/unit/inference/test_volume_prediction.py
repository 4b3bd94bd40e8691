"""Out-of-core tiled prediction: exact halos, lazy formats, incremental outputs, resume, shards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import tifffile
import torch
import zarr

from src.data.io import ImageReadError, write_tiff
from src.data.io.volumes import open_volume, sample_range
from src.inference.fusion import fold_batch_norm
from src.inference.receptive_field import receptive_radius
from src.inference.tiled import TiledPredictor
from src.inference.volume_prediction import predict_volume, progress_dir
from src.models.nets.lrcsnet import LRCSNet
from src.models.nets.unet import UNet
from src.models.segmentation import SegmentationModule
from tests.helpers import compose, write_segmentation_checkpoint

ROOT = Path(__file__).resolve().parents[3]
CLASSES = ["NMC", "CBD", "pore"]


def direct_labels(net, image: np.ndarray, spatial_dims: int, m: int) -> np.ndarray:
    """The net applied once to the whole (reflect-padded) volume: the in-memory reference."""
    axes = (1, 2) if spatial_dims == 2 else (0, 1, 2)
    pad = [(0, (-s) % m if a in axes else 0) for a, s in enumerate(image.shape)]
    x = torch.from_numpy(np.pad(image, pad, mode="reflect"))
    with torch.no_grad():
        logits = net(x[:, None]) if spatial_dims == 2 else net(x[None, None])[0].transpose(0, 1)
    return logits.argmax(1).numpy()[tuple(slice(0, s) for s in image.shape)].astype(np.uint8)


@pytest.mark.parametrize(("net", "dims", "m", "chunk"), [
    (LRCSNet(base_filters=4), 2, 8, (5, 16, 24)),           # in-plane tiles with halos
    (LRCSNet(base_filters=4), 2, 8, (4, None, None)),       # whole slices
    (UNet(3, base_filters=4, depth=2), 3, 4, (8, 12, 16)),  # 3D tiles with halos
])
def test_chunked_equals_whole_volume_prediction_on_odd_sizes(net, dims, m, chunk):
    torch.manual_seed(0)
    net.eval()
    image = np.random.default_rng(0).random((13, 45, 59) if dims == 2 else (21, 27, 30)).astype(np.float32)
    predictor = TiledPredictor(net, dims, m, chunk=chunk)
    grid = predictor.grid(image.shape)
    assert len(grid) > 1 and all(s % c for s, c in zip(image.shape, grid.chunk, strict=True) if c < s)
    labels = predictor.predict(image, progress=False)
    np.testing.assert_array_equal(labels, direct_labels(net, image, dims, m))


def test_too_small_halo_is_not_exact_and_auto_halo_covers_the_receptive_field():
    torch.manual_seed(0)
    net = LRCSNet(base_filters=4).eval()
    assert receptive_radius(net, 2, 8) == (47, 47)
    image = np.random.default_rng(1).random((4, 64, 64)).astype(np.float32)

    def probs(**kw):
        return predict_volume(TiledPredictor(net, 2, 8, **kw), image, value_range=(0, 1), save_probabilities=True,
                              progress=False).probabilities

    whole = probs()
    exact = probs(chunk=(4, 16, 16))
    np.testing.assert_allclose(exact, whole, atol=1e-5)
    cut = probs(chunk=(4, 16, 16), halo=8)  # too little context: another result
    assert np.abs(cut - whole).max() > 10 * np.abs(exact - whole).max() + 1e-6
    assert TiledPredictor(net, 2, 8, chunk=(4, 16, 16)).grid(image.shape).halo == (0, 48, 48)


def test_batching_bf16_and_channels_last_on_cpu():
    torch.manual_seed(0)
    net = LRCSNet(base_filters=4).eval()
    image = np.random.default_rng(2).random((7, 40, 48)).astype(np.float32)
    ref = TiledPredictor(net, 2, 8, batch_size=1).predict(image, progress=False)
    fast = TiledPredictor(net, 2, 8, batch_size=4, channels_last=True).predict(image, progress=False)
    np.testing.assert_array_equal(fast, ref)
    bf16 = TiledPredictor(net, 2, 8, precision="bf16").predict(image, progress=False)
    assert (bf16 == ref).mean() > 0.95  # bfloat16 keeps 8 bits of mantissa: near ties may flip
    with pytest.raises(ValueError, match="precision"):
        TiledPredictor(net, 2, 8, precision="int8")


def randomise_batch_norm(net: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial running statistics and affine parameters (as after training)."""
    g = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
    return net.eval()


@pytest.mark.parametrize(("net", "dims", "shape"), [
    (LRCSNet(base_filters=4), 2, (3, 1, 40, 48)),
    (UNet(2, base_filters=4, depth=3), 2, (3, 1, 40, 48)),
    (UNet(3, base_filters=4, depth=2), 3, (1, 1, 12, 16, 20)),
])
def test_folding_batch_norm_keeps_the_function_and_the_original_net(net, dims, shape):
    torch.manual_seed(0)
    net = randomise_batch_norm(net)
    n_norms = sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules())
    x = torch.randn(shape)
    with torch.no_grad():
        ref = net(x)
        folded, count = fold_batch_norm(net)
        out = folded(x)
    assert count == n_norms > 0
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in net.modules()) == n_norms
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())
    image = np.random.default_rng(3).random((5, 40, 48) if dims == 2 else (12, 16, 20)).astype(np.float32)
    fused = TiledPredictor(net, dims, 8 if dims == 2 else 4).predict(image, progress=False)
    plain = TiledPredictor(net, dims, 8 if dims == 2 else 4, fuse_batch_norm=False).predict(image, progress=False)
    assert (fused == plain).mean() > 0.999  # only exact ties may flip


def write_formats(image: np.ndarray, folder: Path) -> dict[str, str]:
    write_tiff(folder / "vol.tif", image)
    with h5py.File(folder / "vol.h5", "w") as f:
        f.create_dataset("exchange/data", data=image, chunks=(4, 16, 16))
    zarr.create_array(str(folder / "vol.zarr"), data=image, chunks=(5, 20, 20))
    np.save(folder / "vol.npy", image)
    slices = folder / "slices"
    for i, s in enumerate(image):
        write_tiff(slices / f"s{i}.tif", s)
    return {"tiff": str(folder / "vol.tif"), "hdf5": f"{folder / 'vol.h5'}:exchange/data",
            "zarr": str(folder / "vol.zarr"), "npy": str(folder / "vol.npy"), "folder": str(slices)}


def test_lazy_formats_and_outputs_equal_in_memory(tmp_path):
    torch.manual_seed(0)
    net = LRCSNet(base_filters=4).eval()
    image = (np.random.default_rng(3).random((11, 37, 43)) * 1000).astype(np.uint16)
    predictor = TiledPredictor(net, 2, 8, chunk=(3, 24, 24))
    value_range = sample_range(open_volume(image))
    memory = predict_volume(predictor, image, value_range=value_range, save_probabilities=True, progress=False)
    for kind, spec in write_formats(image, tmp_path).items():
        source = open_volume(spec)
        assert source.shape == image.shape and sample_range(source) == value_range, kind
        out = tmp_path / f"seg_{kind}.zarr"
        result = predict_volume(predictor, source, out, value_range=value_range, save_probabilities=True,
                                class_names=CLASSES, progress=False)
        assert result.finished and not progress_dir(out).exists()
        group = zarr.open_group(str(out), mode="r")
        np.testing.assert_array_equal(group["labels"][:], memory.labels, err_msg=kind)
        np.testing.assert_allclose(group["probabilities"][:], memory.probabilities, atol=1e-6)
        assert group.attrs["complete"] and group.attrs["class_names"] == CLASSES
    out = tmp_path / "seg.tif"
    predict_volume(predictor, spec, out, value_range=value_range, save_probabilities=True, progress=False,
                   class_names=CLASSES)
    np.testing.assert_array_equal(tifffile.imread(out), memory.labels)
    np.testing.assert_allclose(tifffile.imread(tmp_path / "seg_probs.tif"), memory.probabilities, atol=1e-6)
    assert sorted(p.name for p in tmp_path.glob("seg*.tif")) == ["seg.tif", "seg_probs.tif"]
    with pytest.raises(FileExistsError, match="overwrite"):
        predict_volume(predictor, spec, out, value_range=value_range, progress=False)


def test_bad_inputs_are_named(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        open_volume(tmp_path / "missing.tif")
    with h5py.File(tmp_path / "two.h5", "w") as f:
        f["a"], f["b"] = np.zeros((4, 4, 4)), np.zeros((4, 4, 4))
    with pytest.raises(ImageReadError, match=r"2 image datasets \(a, b\)"):
        open_volume(tmp_path / "two.h5")
    with pytest.raises(ImageReadError, match="no dataset 'c'"):
        open_volume(f"{tmp_path / 'two.h5'}:c")
    with pytest.raises(ValueError, match="expected a .zarr store or a .tif"):
        predict_volume(TiledPredictor(LRCSNet(base_filters=2), 2, 8), np.zeros((2, 8, 8), np.float32),
                       tmp_path / "seg.png", value_range=(0, 1))


def test_resume_skips_done_chunks_and_refuses_other_settings(tmp_path):
    torch.manual_seed(0)
    net = LRCSNet(base_filters=4).eval()
    image = np.random.default_rng(4).random((9, 24, 40)).astype(np.float32)
    predictor = TiledPredictor(net, 2, 8, chunk=(2, None, None))
    out = tmp_path / "seg.zarr"
    first = predict_volume(predictor, image, out, value_range=(0, 1), progress=False, max_chunks=2)
    assert first.computed == [0, 1] and not first.finished and progress_dir(out).exists()
    with pytest.raises(ValueError, match="cannot resume .*value_range"):
        predict_volume(predictor, image, out, value_range=(0, 2), progress=False)
    second = predict_volume(predictor, image, out, value_range=(0, 1), progress=False)
    assert second.skipped == 2 and second.computed == [2, 3, 4] and second.finished
    np.testing.assert_array_equal(zarr.open_group(str(out))["labels"][:], predictor.predict(image, progress=False))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A real (untrained) LRCS-Net checkpoint as train.py writes it."""
    return write_segmentation_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.ckpt", 8, tuple(CLASSES))


def predict_cmd(ckpt: Path, image: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "predict.py", f"ckpt_path={ckpt}", f"input={image}", f"output={out}",
            "progress=false", f"hydra.run.dir={out.parent / 'run'}", *extra]


def env1() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled"}


def test_killed_prediction_resumes_at_first_unfinished_chunk(tiny_checkpoint, tmp_path):
    import predict

    image = np.random.default_rng(5).random((60, 192, 184)).astype(np.float32)
    write_tiff(tmp_path / "vol.tif", image)
    out = tmp_path / "seg.tif"
    overrides = ["tiling.chunk=[1,null,null]", "tiling.batch_size=1"]
    proc = subprocess.Popen(predict_cmd(tiny_checkpoint, tmp_path / "vol.tif", out, *overrides), cwd=ROOT, env=env1(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_dir = progress_dir(out) / "done"
    deadline = time.monotonic() + 600  # generous: the machine may be busy
    while time.monotonic() < deadline and proc.poll() is None:
        if done_dir.is_dir() and len(list(done_dir.iterdir())) >= 3:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait() == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = sorted(int(p.name) for p in done_dir.iterdir())
    assert 3 <= len(done) < 60 and not out.exists()
    cfg = compose("predict", [f"ckpt_path={tiny_checkpoint}", f"input={tmp_path / 'vol.tif'}", f"output={out}",
                              "progress=false", *overrides])
    result = predict.predict(cfg)
    assert result.skipped == len(done) and result.computed == [i for i in range(60) if i not in done]
    assert result.finished and out.exists() and not progress_dir(out).exists()
    whole = predict.predict(compose("predict", [f"ckpt_path={tiny_checkpoint}", f"input={tmp_path / 'vol.tif'}",
                                                f"output={tmp_path / 'whole.zarr'}", "progress=false"]))
    assert whole.n_chunks == 4
    np.testing.assert_array_equal(tifffile.imread(out), zarr.open_group(str(tmp_path / "whole.zarr"))["labels"][:])


def test_two_ranks_share_one_zarr_output(tiny_checkpoint, tmp_path):
    image = (np.random.default_rng(6).random((14, 50, 46)) * 255).astype(np.uint8)
    with h5py.File(tmp_path / "vol.h5", "w") as f:
        f["data"] = image
    out = tmp_path / "seg.zarr"
    procs = [subprocess.Popen(predict_cmd(tiny_checkpoint, tmp_path / "vol.h5", out, "tiling.chunk=[2,32,32]",
                                          "save_probabilities=true"),
                              cwd=ROOT, env={**env1(), "RANK": str(r), "WORLD_SIZE": "2"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for r in (0, 1)]
    logs = [p.communicate(timeout=600)[0].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs
    assert all(f"rank {r}: 14 chunks predicted" in log for r, log in zip((0, 1), logs, strict=True)), logs
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["complete"] and not progress_dir(out).exists()
    module_net = torch.load(tiny_checkpoint, weights_only=False)
    net = SegmentationModule(**{k: module_net["hyper_parameters"][k] for k in ("net", "class_names")}).net
    net.load_state_dict({k[4:]: v for k, v in module_net["state_dict"].items() if k.startswith("net.")})
    predictor = TiledPredictor(net.eval(), 2, 8)
    ref = predict_volume(predictor, image, value_range=sample_range(open_volume(image)), progress=False)
    np.testing.assert_array_equal(group["labels"][:], ref.labels)
    assert group["probabilities"].shape == (3, *image.shape)


def test_evaluate_chunked_matches_sliding_window_on_small_slices(tiny_checkpoint, tiny_data, tmp_path):
    import evaluate

    image = f"{tiny_data}/3d/vol0_image.tif"
    reports = [evaluate.evaluate(compose("evaluate", [f"ckpt_path={tiny_checkpoint}", f"images={image}",
                                                      f"labels={tiny_data}/3d/vol0_label.tif", f"output_dir={tmp_path / k}",
                                                      "progress=false", "panels=false", f"chunked={k == 'chunked'}"]))
               for k in ("window", "chunked")]
    # slices (48 x 48) fit one window: the sliding window is the whole-slice prediction
    assert reports[0]["overall"] == reports[1]["overall"]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "window" / "vol0_seg.tif"),
                                  tifffile.imread(tmp_path / "chunked" / "vol0_seg.tif"))
    with pytest.raises(ValueError, match="chunked=true"):
        evaluate.evaluate(compose("evaluate", [f"ckpt_path={tiny_checkpoint}", f"images={image}", "chunked=true",
                                               "tta=true", f"output_dir={tmp_path / 'x'}"]))


@pytest.mark.slow
def test_torch_compile_gives_the_same_labels():
    torch.manual_seed(0)
    net = LRCSNet(base_filters=4).eval()
    image = np.random.default_rng(7).random((4, 32, 40)).astype(np.float32)
    ref = TiledPredictor(net, 2, 8).predict(image, progress=False)
    np.testing.assert_array_equal(TiledPredictor(net, 2, 8, compile=True).predict(image, progress=False), ref)
