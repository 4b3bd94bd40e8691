"""experiment=adapt_scribbles (train.py) on napari-style scribbles, then evaluate.py scoring the
labelled pixels only with uncertainty, calibration and "label here next"; bad scribbles."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from src.analysis.metrics import confusion_matrix
from src.data.io import read_image, write_tiff
from src.models.checkpoint import CheckpointError
from tests.helpers import blob_labels, compose, grey_from_labels, write_segmentation_checkpoint

TINY = ["data.patch_size=32", "data.samples_per_epoch=8", "data.batch_size=4", "data.val_max_tiles=4",
        "trainer.max_epochs=1", "trainer.max_time=null", "logger=csv"]


@pytest.fixture(scope="module")
def scribbled(tmp_path_factory):
    root = tmp_path_factory.mktemp("scribbles")
    truth = {}
    for i in range(2):
        lab = blob_labels((48, 64), seed=40 + i)
        write_tiff(root / f"s{i}.tif", grey_from_labels(lab, 40 + i))
        scrib = np.zeros_like(lab)
        scrib[4:44:5, 6:58] = lab[4:44:5, 6:58] + 1  # napari: 0 = unlabelled, 1..3
        write_tiff(root / "scribbles" / f"s{i}_label.tif", scrib)
        truth[i] = lab
    ckpt = write_segmentation_checkpoint(root / "trained.ckpt", base_filters=4)
    return root, ckpt, truth


def test_adapt_then_score_labelled_pixels_with_uncertainty(scribbled, tmp_path):
    import evaluate
    import train

    root, ckpt, _ = scribbled
    images, labels = f"[{root}/s0.tif,{root}/s1.tif]", f"{root}/scribbles/*_label.tif"
    run = tmp_path / "adapt"
    train.train(compose("train", ["experiment=adapt_scribbles", f"init_from={ckpt}", f"data.images={images}",
                                  f"data.labels={labels}", f"paths.output_dir={run}", *TINY]))
    adapted = run / "checkpoints" / "last.ckpt"
    assert adapted.is_file()
    out = tmp_path / "eval"
    report = evaluate.evaluate(compose("evaluate", [
        f"ckpt_path={adapted}", f"images={images}", f"labels={labels}", "label_values=[1,2,3]", "unlabelled_value=0",
        "save_uncertainty=true", "tta=true", "suggest_region=16", f"output_dir={out}", "progress=false"]))
    assert report["sparse_labels"] and 0 < report["labelled_fraction"]["s0"] < 0.3
    seg = read_image(out / "s0_seg.tif")
    scrib = read_image(root / "scribbles" / "s0_label.tif")
    cm = confusion_matrix(seg[scrib > 0], scrib[scrib > 0] - 1, 3)  # only the scribbled pixels count
    assert report["per_image"]["s0"]["confusion_matrix"] == cm.tolist()
    entropy = read_image(out / "s0_uncertainty.tif")
    assert entropy.shape == seg.shape and 0 <= entropy.min() and entropy.max() <= np.log(3) + 1e-5
    with open(out / "s0_suggestions.csv") as fh:
        rows = list(csv.DictReader(fh))
    means = [float(r["mean_uncertainty"]) for r in rows]
    assert means == sorted(means, reverse=True) and len(rows) == 3 * 4
    y0, x0 = int(rows[0]["y0"]), int(rows[0]["x0"])
    assert means[0] == pytest.approx(float(entropy[y0:y0 + 16, x0:x0 + 16].mean()), rel=1e-4)
    assert (out / "s0_suggestions.png").is_file() and (out / "reliability.png").is_file()
    calib = json.loads((out / "calibration.json").read_text())
    assert calib["n_voxels"] == int((scrib > 0).sum() + (read_image(root / "scribbles" / "s1_label.tif") > 0).sum())
    assert 0 <= report["overall"]["ece"] <= 1


def test_bad_scribbles_are_refused_with_clear_errors(scribbled, tmp_path):
    import train

    root, ckpt, truth = scribbled
    bad = truth[0].astype(np.uint8) + 1
    bad[0, 0] = 7
    write_tiff(tmp_path / "bad" / "s0_label.tif", bad)
    base = ["experiment=adapt_scribbles", f"init_from={ckpt}", f"data.images=[{root}/s0.tif]",
            f"paths.output_dir={tmp_path / 'run'}", *TINY]
    with pytest.raises(ValueError, match=r"s0_label\.tif: label values \[7\] are neither a class"):
        train.train(compose("train", [*base, f"data.labels=[{tmp_path}/bad/s0_label.tif]"]))
    four = np.where(truth[0] == 2, 4, truth[0] + 1).astype(np.uint8)
    write_tiff(tmp_path / "four" / "s0_label.tif", four)
    classes = ["data.class_names=[NMC,CBD,pore,crack]", "data.label_values=[1,2,3,4]",
               f"data.labels=[{tmp_path}/four/s0_label.tif]"]
    with pytest.raises(CheckpointError, match=r"\['crack'\] never seen by it.*reinit_head=true"):
        train.train(compose("train", [*base, *classes]))
    train.train(compose("train", [*base, *classes, "reinit_head=true", f"paths.output_dir={tmp_path / 'run4'}"]))
    assert (tmp_path / "run4" / "checkpoints" / "last.ckpt").is_file()
