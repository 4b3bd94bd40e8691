"""evaluate.py on a checkpoint trained inside the test: outputs, metrics, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile

from src.analysis.metrics import confusion_matrix, scores_from_confusion
from src.data.io import ImageReadError, read_image, write_tiff
from src.models.checkpoint import CheckpointError
from tests.helpers import blob_labels, compose, grey_from_labels, tiny_train_overrides

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def checkpoint(tiny_data, tmp_path_factory) -> Path:
    import train

    out = tmp_path_factory.mktemp("run")
    train.train(compose("train", tiny_train_overrides(tiny_data, out, model="lrcsnet")))
    return out / "checkpoints" / "best.ckpt"


def eval_cfg(ckpt: Path, images, labels, out: Path, *extra: str):
    overrides = [f"ckpt_path={ckpt}", f"images={images}", f"output_dir={out}", "progress=false", *extra]
    if labels is not None:
        overrides.append(f"labels={labels}")
    return compose("evaluate", overrides)


def test_evaluate_3d_and_odd_2d(checkpoint, tmp_path):
    import evaluate

    data = tmp_path / "odd"
    for i, shape in enumerate([(37, 53), (41, 29)]):  # not multiples of 8
        lab = blob_labels(shape, seed=30 + i)
        write_tiff(data / f"{i}.tif", grey_from_labels(lab, 30 + i))
        write_tiff(data / f"{i}_label.tif", lab)
    report = evaluate.evaluate(eval_cfg(checkpoint, f"{data}/*.tif", f"{data}/*_label.tif", tmp_path / "out"))
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["class_names"] == ["NMC", "CBD", "pore"]
    assert set(saved["per_image"]) == {"0", "1"}
    assert saved["pairs"]["1"] == {"image": str(data / "1.tif"), "label": str(data / "1_label.tif")}
    total = np.zeros((3, 3), np.int64)
    for name, shape in [("0", (37, 53)), ("1", (41, 29))]:
        seg = tifffile.imread(tmp_path / "out" / f"{name}_seg.tif")
        assert seg.shape == shape and seg.dtype == np.uint8
        cm = confusion_matrix(seg, read_image(data / f"{name}_label.tif"), 3)
        total += cm
        assert saved["per_image"][name]["confusion_matrix"] == cm.tolist()
        assert (tmp_path / "out" / f"{name}_panel.png").is_file()
    expected = scores_from_confusion(total, ["NMC", "CBD", "pore"])
    assert saved["overall"]["accuracy"] == pytest.approx(expected["accuracy"])
    assert saved["overall"]["miou"] == pytest.approx(report["overall"]["miou"])
    for key in ["accuracy", "miou", "iou", "dice", "confusion_matrix"]:
        assert key in saved["overall"]


def test_evaluate_volume_with_probabilities(checkpoint, tiny_data, tmp_path):
    import evaluate

    evaluate.evaluate(eval_cfg(checkpoint, f"{tiny_data}/3d/vol0_image.tif", f"{tiny_data}/3d/vol0_label.tif",
                               tmp_path, "save_probabilities=true"))
    seg = tifffile.imread(tmp_path / "vol0_seg.tif")
    probs = tifffile.imread(tmp_path / "vol0_probs.tif")
    assert seg.shape == (40, 48, 48)
    assert probs.shape == (3, 40, 48, 48)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(probs.argmax(0), seg)


def test_evaluate_without_labels_only_predicts(checkpoint, tiny_data, tmp_path):
    import evaluate

    assert evaluate.evaluate(eval_cfg(checkpoint, f"{tiny_data}/2d/0.tif", None, tmp_path)) == {}
    assert (tmp_path / "0_seg.tif").is_file()
    assert not (tmp_path / "metrics.json").exists()


def test_evaluate_cli(checkpoint, tiny_data, tmp_path):
    result = subprocess.run(
        [sys.executable, "evaluate.py", f"ckpt_path={checkpoint}", f"images={tiny_data}/2d",
         f"labels={tiny_data}/2d/*_label.tif", f"output_dir={tmp_path}", "progress=false"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "overall" in result.stdout and "IoU_CBD" in result.stdout
    assert (tmp_path / "metrics.json").is_file()


# ---- bad input: one clear error, nothing overwritten ---------------------------------------

@pytest.fixture
def sentinel(tmp_path) -> Path:
    """An output folder holding an earlier metrics.json that must survive a failed run."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "metrics.json").write_text('{"old": true}')
    return out


def bad_case(tmp_path: Path, kind: str) -> tuple[Path, Path]:
    d = tmp_path / kind
    lab = blob_labels((32, 40), seed=1)
    image = grey_from_labels(lab, 1)
    if kind == "shape":
        lab = lab[:, :32]
    elif kind == "values":
        lab = lab.copy()
        lab[0, 0] = 7
    elif kind == "nan":
        image[3, 3] = np.nan
    elif kind == "constant":
        image[:] = 2.0
    write_tiff(d / "a.tif", image)
    write_tiff(d / "a_label.tif", lab)
    if kind == "truncated":
        raw = (d / "a.tif").read_bytes()
        (d / "a.tif").write_bytes(raw[: len(raw) // 2])
    return d / "a.tif", d / "a_label.tif"


@pytest.mark.parametrize(
    ("kind", "error", "message"),
    [
        ("shape", ValueError, r"shape mismatch: image .*a.tif is \(32, 40\) but label .*a_label.tif is \(32, 32\)"),
        ("values", ValueError, r"a_label.tif: label values \[7\] are neither a class \(label_values \[0, 1, 2\]"),
        ("nan", ValueError, r"a.tif.*(NaN|non-finite)"),
        ("constant", ValueError, r"a.tif.*constant"),
        ("truncated", ImageReadError, r"a.tif"),
    ],
)
def test_bad_images_fail_before_writing(checkpoint, tmp_path, sentinel, kind, error, message):
    import evaluate

    image, label = bad_case(tmp_path, kind)
    with pytest.raises(error, match=message):
        evaluate.evaluate(eval_cfg(checkpoint, image, label, sentinel))
    assert (sentinel / "metrics.json").read_text() == '{"old": true}'
    assert not list(sentinel.glob("*_seg.tif"))


def test_output_dir_that_is_a_file(checkpoint, tiny_data, tmp_path):
    import evaluate

    (tmp_path / "taken").write_text("a file")
    with pytest.raises(NotADirectoryError, match="output_dir=.*taken is an existing file; expected a folder"):
        evaluate.evaluate(eval_cfg(checkpoint, f"{tiny_data}/2d/0.tif", None, tmp_path / "taken"))


def test_missing_checkpoint(tiny_data, tmp_path, sentinel):
    import evaluate

    with pytest.raises(CheckpointError, match=r"checkpoint .*nope.ckpt does not exist"):
        evaluate.evaluate(eval_cfg(tmp_path / "nope.ckpt", f"{tiny_data}/2d/0.tif", None, sentinel))


def test_checkpoint_of_another_model(checkpoint, tiny_data, sentinel):
    import evaluate

    with pytest.raises(CheckpointError, match=r"holds model 'lrcsnet' .*but model_name=unet was asked"):
        evaluate.evaluate(eval_cfg(checkpoint, f"{tiny_data}/2d/0.tif", None, sentinel, "model_name=unet"))
    assert not list(sentinel.glob("*_seg.tif"))


def test_checkpoint_that_is_not_ours(tiny_data, tmp_path, sentinel):
    import torch

    import evaluate

    torch.save({"state_dict": {}}, tmp_path / "other.ckpt")
    with pytest.raises(CheckpointError, match="not a segmentation or reconstruction checkpoint"):
        evaluate.evaluate(eval_cfg(tmp_path / "other.ckpt", f"{tiny_data}/2d/0.tif", None, sentinel))
    (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        evaluate.evaluate(eval_cfg(tmp_path / "junk.ckpt", f"{tiny_data}/2d/0.tif", None, sentinel))


def test_checkpoint_with_mismatched_weights(checkpoint, tiny_data, tmp_path, sentinel):
    import torch

    import evaluate

    ckpt = torch.load(checkpoint, weights_only=False)
    ckpt["hyper_parameters"]["net"]["base_filters"] = 8  # weights were trained with 32
    torch.save(ckpt, tmp_path / "mismatch.ckpt")
    with pytest.raises(CheckpointError, match="weights do not fit model 'lrcsnet'"):
        evaluate.evaluate(eval_cfg(tmp_path / "mismatch.ckpt", f"{tiny_data}/2d/0.tif", None, sentinel))


def test_unpairable_images_and_labels(checkpoint, tiny_data, tmp_path, sentinel):
    import evaluate

    with pytest.raises(ValueError, match="cannot pair 2 images with 1 labels"):
        evaluate.evaluate(eval_cfg(checkpoint, f"{tiny_data}/2d", f"{tiny_data}/3d/vol0_label.tif", sentinel))


def test_evaluate_with_3d_statistics(checkpoint, tiny_data, tmp_path):
    import csv

    import evaluate

    fast = ["stats=true", "statistics.tortuosity=false", "statistics.axes=[0]", "statistics.thickness_phases=[]",
            "statistics.particles.min_voxels=1"]
    evaluate.evaluate(eval_cfg(checkpoint, f"{tiny_data}/3d/vol0_image.tif", None, tmp_path, "voxel_size_nm=40", *fast))
    rows = list(csv.DictReader((tmp_path / "stats.csv").open()))
    assert [r["volume"] for r in rows] == ["vol0"]
    seg = tifffile.imread(tmp_path / "vol0_seg.tif")
    assert float(rows[0]["volume_fraction/NMC"]) == pytest.approx(np.mean(seg == 0))
    units = json.loads((tmp_path / "units.json").read_text())
    assert units["voxel_size_nm"] == 40.0
    assert (tmp_path / "stats.json").is_file()
    with pytest.raises(ValueError, match="stats=true needs voxel_size_nm"):
        evaluate.evaluate(eval_cfg(checkpoint, f"{tiny_data}/3d/vol0_image.tif", None, tmp_path / "b", *fast))
    with pytest.raises(ValueError, match="stats=true needs 3D"):
        evaluate.evaluate(eval_cfg(checkpoint, f"{tiny_data}/2d/0.tif", None, tmp_path / "c", "voxel_size_nm=40", *fast))


def test_evaluate_with_tta_and_orthogonal_planes(checkpoint, tiny_data, tmp_path):
    import evaluate

    evaluate.evaluate(eval_cfg(checkpoint, f"{tiny_data}/3d/vol0_image.tif", f"{tiny_data}/3d/vol0_label.tif",
                               tmp_path, "save_probabilities=true", "tta=true", "slice_axes=[0,1,2]"))
    seg = tifffile.imread(tmp_path / "vol0_seg.tif")
    probs = tifffile.imread(tmp_path / "vol0_probs.tif")
    assert probs.shape == (3, 40, 48, 48)
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-4)
    np.testing.assert_array_equal(probs.argmax(0), seg)
