"""Segmentation metrics against hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest

from src.analysis import metrics
from src.analysis.metrics import confusion_matrix, format_table, scores_from_confusion

NAMES = ["NMC", "CBD", "pore"]
# truth and prediction, 2 x 3 pixels; (truth, pred) pairs row-major:
# (0,0) (0,1) (1,1) / (1,1) (2,2) (2,0)
TARGET = np.array([[0, 0, 1], [1, 2, 2]])
PRED = np.array([[0, 1, 1], [1, 2, 0]])
# rows = truth, columns = prediction
CM = np.array([[1, 1, 0], [0, 2, 0], [1, 0, 1]])
# per class: tp, fp (column - tp), fn (row - tp); IoU = tp/(tp+fp+fn); Dice = 2tp/(2tp+fp+fn)
#   NMC:  tp 1, fp 1, fn 1 -> IoU 1/3, Dice 2/4
#   CBD:  tp 2, fp 1, fn 0 -> IoU 2/3, Dice 4/5
#   pore: tp 1, fp 0, fn 1 -> IoU 1/2, Dice 2/3
# accuracy = 4/6; mIoU = (1/3 + 2/3 + 1/2)/3 = 1/2; mDice = (1/2 + 4/5 + 2/3)/3 = 59/90


def test_confusion_matrix_by_hand() -> None:
    cm = confusion_matrix(PRED, TARGET, 3)
    assert cm.dtype == np.int64 and cm.shape == (3, 3)
    np.testing.assert_array_equal(cm, CM)


def test_confusion_matrix_chunked_and_dtypes(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    t = rng.integers(0, 4, (5, 7, 9)).astype(np.uint8)
    p = rng.integers(0, 4, (5, 7, 9)).astype(np.int32)
    full = confusion_matrix(p, t, 4)
    monkeypatch.setattr(metrics, "_CHUNK", 10)
    np.testing.assert_array_equal(confusion_matrix(p, t, 4), full)
    assert full.sum() == t.size
    np.testing.assert_array_equal(confusion_matrix(PRED.astype(float), TARGET, 3), CM)
    np.testing.assert_array_equal(confusion_matrix(PRED > 0, TARGET > 0, 2), [[1, 1], [1, 3]])


def test_scores_by_hand() -> None:
    s = scores_from_confusion(CM, NAMES)
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["iou"] == pytest.approx({"NMC": 1 / 3, "CBD": 2 / 3, "pore": 1 / 2})
    assert s["dice"] == pytest.approx({"NMC": 1 / 2, "CBD": 4 / 5, "pore": 2 / 3})
    assert s["miou"] == pytest.approx(1 / 2)
    assert s["mdice"] == pytest.approx(59 / 90)
    assert s["confusion_matrix"] == CM.tolist()
    assert all(isinstance(s[k], float) for k in ("accuracy", "miou", "mdice"))


def test_perfect_prediction() -> None:
    s = scores_from_confusion(confusion_matrix(TARGET, TARGET, 3), NAMES)
    assert s["accuracy"] == s["miou"] == s["mdice"] == 1.0


def test_absent_class_is_nan_and_excluded() -> None:
    cm = confusion_matrix(PRED, TARGET, 4)  # class 3 in neither truth nor prediction
    s = scores_from_confusion(cm, [*NAMES, "crack"])
    assert math.isnan(s["iou"]["crack"]) and math.isnan(s["dice"]["crack"])
    assert s["miou"] == pytest.approx(1 / 2)
    assert s["mdice"] == pytest.approx(59 / 90)


def test_class_only_predicted_counts_as_zero() -> None:
    # truth has no class 2, but one pixel is predicted as 2: IoU 0, included in the mean
    s = scores_from_confusion(confusion_matrix(np.array([0, 1, 2]), np.array([0, 1, 1]), 3), NAMES)
    assert s["iou"]["pore"] == 0.0
    # NMC IoU 1; CBD tp 1, fn 1 -> 1/2; mean over 3 classes
    assert s["miou"] == pytest.approx((1 + 0.5 + 0) / 3)


def test_empty_matrix() -> None:
    s = scores_from_confusion(np.zeros((3, 3), np.int64), NAMES)
    assert math.isnan(s["accuracy"]) and math.isnan(s["miou"]) and math.isnan(s["mdice"])


def test_confusion_matrix_errors() -> None:
    with pytest.raises(ValueError, match=r"\(2, 3\).*\(3, 2\)"):
        confusion_matrix(PRED, TARGET.T, 3)
    with pytest.raises(ValueError, match=r"pred.*\[0, 3\).*-1, 5"):
        confusion_matrix(np.array([0, -1, 5, 5]), np.array([0, 1, 2, 2]), 3)
    with pytest.raises(ValueError, match=r"target.*\[0, 2\): 2"):
        confusion_matrix(np.array([0, 1, 1]), np.array([0, 1, 2]), 2)
    with pytest.raises(ValueError, match="integer class labels"):
        confusion_matrix(np.array([0.5, 1.0]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="num_classes"):
        confusion_matrix(PRED, TARGET, 0)
    with pytest.raises(ValueError, match="3 class names"):
        scores_from_confusion(np.zeros((2, 2)), NAMES)


def test_format_table() -> None:
    s = scores_from_confusion(CM, NAMES)
    table = format_table({"slice_001.tif": s, "slice_002.tif": s}, s, NAMES)
    lines = table.splitlines()
    header = lines[0].split()
    assert header == [
        "image",
        "accuracy",
        "mIoU",
        "IoU_NMC",
        "IoU_CBD",
        "IoU_pore",
        "Dice_NMC",
        "Dice_CBD",
        "Dice_pore",
    ]
    rows = [
        ln.split() for ln in lines if ln.split()[0] in ("slice_001.tif", "slice_002.tif", "overall")
    ]
    assert [r[0] for r in rows] == ["slice_001.tif", "slice_002.tif", "overall"]
    assert rows[-1][1:4] == ["0.6667", "0.5000", "0.3333"]
    assert len({len(ln) for ln in lines}) == 1  # aligned columns
