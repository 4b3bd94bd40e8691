"""Issue 4 pieces: classical methods through evaluate.py, fine-tuning from a pretrained
checkpoint, and the human-label bias study."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from src.analysis.label_bias import label_bias_table, shift_phase_border
from src.models.checkpoint import CheckpointError, load_pretrained_weights
from tests.helpers import blob_labels, compose, tiny_train_overrides


def baseline_cfg(method: str, data, out, *extra: str):
    return compose("evaluate", [
        f"method={method}", f"images={data}/2d/1.tif", f"labels={data}/2d/*_label.tif",
        f"output_dir={out}", "progress=false", *extra,
    ])


@pytest.mark.parametrize("method", ["otsu", "kmeans"])
def test_evaluate_unsupervised_baselines(method, tiny_data, tmp_path):
    import evaluate

    report = evaluate.evaluate(baseline_cfg(method, tiny_data, tmp_path))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["method"] == method and metrics["checkpoint"] is None
    assert metrics["overall"]["accuracy"] == pytest.approx(report["overall"]["accuracy"])
    # the tiny images are bright NMC / mid CBD / dark pore with little noise: easy for both
    assert metrics["overall"]["accuracy"] > 0.8
    assert (tmp_path / "1_seg.tif").is_file() and (tmp_path / "1_panel.png").is_file()


def test_evaluate_random_forest_learns_from_training_slices(tiny_data, tmp_path):
    import evaluate

    cfg = baseline_cfg("random_forest", tiny_data, tmp_path, f"method.train_images={tiny_data}/2d/0.tif",
                       "method.segmenter.n_estimators=20", "method.segmenter.samples_per_class=300")
    report = evaluate.evaluate(cfg)
    assert report["method"] == "random_forest"
    assert [p.endswith("0.tif") for p in report["train_images"]] == [True]
    assert report["overall"]["miou"] > 0.6


def test_baseline_errors_before_writing(tiny_data, tmp_path):
    import evaluate

    out = tmp_path / "out"
    with pytest.raises(Exception, match="train_images"):  # mandatory value missing
        evaluate.evaluate(baseline_cfg("random_forest", tiny_data, out))
    with pytest.raises(ValueError, match="save_probabilities=true needs method=model"):
        evaluate.evaluate(baseline_cfg("otsu", tiny_data, out, "save_probabilities=true"))
    with pytest.raises(Exception, match="must order all of class_names"):  # via hydra.instantiate
        evaluate.evaluate(baseline_cfg("otsu", tiny_data, out, "method.segmenter.dark_to_bright=[pore,NMC]"))
    with pytest.raises(ValueError, match="ckpt_path=... is required with method=model"):
        evaluate.evaluate(compose("evaluate", [f"images={tiny_data}/2d/1.tif", f"output_dir={out}"]))
    assert not out.exists()


def test_fine_tuning_starts_from_pretrained_weights(tiny_data, tmp_path):
    import hydra

    import train

    pre = tmp_path / "pre"
    train.train(compose("train", tiny_train_overrides(tiny_data, pre)))
    ckpt = pre / "checkpoints" / "last.ckpt"
    stored = torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]

    cfg = compose("train", tiny_train_overrides(tiny_data, tmp_path / "ft"))
    fresh = hydra.utils.instantiate(cfg.model, _recursive_=False)
    n = load_pretrained_weights(fresh, ckpt)
    assert n == len([k for k in fresh.state_dict() if k.startswith("net.")])
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, stored[k]), k
    # through train.py: init_from is logged and the run trains from there
    metrics = train.train(compose("train", [*tiny_train_overrides(tiny_data, tmp_path / "ft2"), f"init_from={ckpt}"]))
    assert 0 <= metrics["val/miou"] <= 1

    other = hydra.utils.instantiate(compose("train", [*tiny_train_overrides(tiny_data, tmp_path / "x"),
                                                      "model.net.base_filters=8"]).model, _recursive_=False)
    with pytest.raises(CheckpointError, match=r"init_from=.*nope.ckpt does not exist: run the pretraining first"):
        train.train(compose("train", [*tiny_train_overrides(tiny_data, tmp_path / "y"), f"init_from={tmp_path}/nope.ckpt"]))
    with pytest.raises(CheckpointError, match=r"holds network lrcsnet .*does not fit this model: .* of another shape"):
        load_pretrained_weights(other, ckpt)


def test_shift_phase_border_disk_and_in_plane():
    yy, xx = np.mgrid[:64, :64]
    disk = ((yy - 32) ** 2 + (xx - 32) ** 2 <= 15**2).astype(np.uint8)  # 1 inside, 0 outside
    grown = shift_phase_border(disk, 1, 1, "dilate")
    shrunk = shift_phase_border(disk, 1, 1, "erode")
    perimeter = np.sum(grown != disk)
    assert 4 * 15 < perimeter < 2 * np.pi * 16 * 1.5  # one ring of pixels
    assert np.sum(disk) - np.sum(shrunk) == pytest.approx(perimeter, rel=0.15)
    assert set(np.unique(shrunk[disk != shrunk])) == {0}  # eroded border goes to the other phase

    vol = np.zeros((9, 32, 32), np.uint8)
    vol[3:6, 8:24, 8:24] = 1
    flat = shift_phase_border(vol, 1, 1, "dilate", in_plane=True)
    assert not flat[2].any() and not flat[6].any()  # slices above/below untouched
    assert shift_phase_border(vol, 1, 1, "dilate", in_plane=False)[2].any()
    with pytest.raises(ValueError, match="mode must be"):
        shift_phase_border(vol, 1, 1, "grow")


def test_label_bias_table_on_three_phases():
    labels = blob_labels((32, 40, 40), seed=3)
    rows = label_bias_table(labels, ["NMC", "CBD", "pore"], voxel_size_nm=50, particles={"min_voxels": 8})
    assert [r["perturbation"] for r in rows][:3] == ["ground truth", "NMC eroded 1 px", "NMC dilated 1 px"]
    truth = rows[0]
    assert sum(truth[f"vf_{p}"] for p in ("NMC", "CBD", "pore")) == pytest.approx(1.0)
    dil = rows[2]
    assert dil["vf_NMC"] > truth["vf_NMC"] and dil["rel_vf_NMC"] > 0
    assert dil["relabelled"] == pytest.approx(dil["vf_NMC"] - truth["vf_NMC"])
    ero = rows[1]
    assert ero["rel_vf_NMC"] < 0 and ero["vf_CBD"] + ero["vf_pore"] > truth["vf_CBD"] + truth["vf_pore"]


def _smooth_field(seed: int, shape=(64, 80)) -> np.ndarray:
    from scipy import ndimage

    field = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=shape), 3.0)
    return ((field - field.min()) / (field.max() - field.min())).astype(np.float32)


def test_label_consistency_separates_consistent_from_slice_dependent_labels():
    from src.analysis.label_consistency import format_consistency_table, label_consistency
    from src.analysis.segmenters import RandomForestSegmenter

    images = [_smooth_field(s) for s in range(3)]

    def rf():
        return RandomForestSegmenter(n_estimators=20, samples_per_class=800)

    # one rule for every slice: two thresholds on the grey value
    same = [np.digitize(im, [0.4, 0.6]).astype(np.uint8) for im in images]
    rows = label_consistency(images, same, ["a", "b", "c"], ["s0", "s1", "s2"], make_segmenter=rf)
    assert [r["slice"] for r in rows] == ["s0", "s1", "s2", "pooled"]
    pooled = rows[-1]
    assert pooled["within"]["miou"] > 0.85 and pooled["across"]["miou"] > 0.85
    assert abs(pooled["within"]["miou"] - pooled["across"]["miou"]) < 0.06
    # the labeller's upper threshold moves from slice to slice: only "within" can follow it
    moved = [np.digitize(im, [0.3, t]).astype(np.uint8) for im, t in zip(images, [0.45, 0.6, 0.75], strict=True)]
    rows_moved = label_consistency(images, moved, ["a", "b", "c"], make_segmenter=rf)
    gap = rows_moved[-1]["within"]["miou"] - rows_moved[-1]["across"]["miou"]
    assert gap > 0.1
    # a per-slice threshold shift is exactly what the oracle bias can undo
    assert rows_moved[-1]["oracle"]["miou"] > rows_moved[-1]["across"]["miou"] + 0.05
    assert all(len(r["oracle_bias"]) == 3 for r in rows_moved[:-1])
    table = format_consistency_table(rows_moved, ["a", "b", "c"])
    assert table.count("\n") == 5 and "pooled" in table
    with pytest.raises(ValueError, match="same 2D shape"):
        label_consistency(images, [same[0], same[1], same[2][:10]], ["a", "b", "c"], make_segmenter=rf)
