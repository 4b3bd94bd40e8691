"""Segmentation metrics from a confusion matrix (numpy only).

Label maps are integer arrays of any shape ((y, x), (z, y, x), batches...) with values in
[0, num_classes). Phases are named by the caller (e.g. ``["NMC", "CBD", "pore"]``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

_CHUNK = 2**24  # voxels per bincount call: bounded memory for whole volumes


def _as_labels(a: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype == bool or np.issubdtype(a.dtype, np.integer):
        return a
    if np.issubdtype(a.dtype, np.floating) and np.all(np.isfinite(a)) and np.all(a == np.round(a)):
        return a.astype(np.int64)
    raise ValueError(f"{name} must hold integer class labels, got dtype {a.dtype}")


def _check_range(a: np.ndarray, name: str, num_classes: int) -> None:
    if a.size and (a.min() < 0 or a.max() >= num_classes):
        bad = np.unique(a[(a < 0) | (a >= num_classes)])
        shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if bad.size > 10 else "")
        raise ValueError(f"{name} has labels outside [0, {num_classes}): {shown}")


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int,
                     ignore_index: int | None = None) -> np.ndarray:
    """Confusion matrix (num_classes, num_classes) int64; rows = truth, columns = prediction.

    ``pred`` and ``target`` are label arrays of the same (any) shape. With ``ignore_index``,
    voxels whose target is that value (unlabelled: sparse labels) are left out.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    pred, target = _as_labels(pred, "pred"), _as_labels(target, "target")
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} does not match target shape {target.shape}")
    if ignore_index is not None:
        labelled = target != ignore_index
        if not labelled.all():
            pred, target = pred[labelled], target[labelled]
    _check_range(pred, "pred", num_classes)
    _check_range(target, "target", num_classes)
    p, t = pred.reshape(-1), target.reshape(-1)
    counts = np.zeros(num_classes * num_classes, dtype=np.int64)
    for start in range(0, p.size, _CHUNK):
        idx = t[start : start + _CHUNK].astype(np.int64) * num_classes
        idx += p[start : start + _CHUNK]
        counts += np.bincount(idx, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def scores_from_confusion(cm: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Accuracy, per-class IoU/Dice and their means from a (n, n) confusion matrix.

    Returns ``{"accuracy", "miou", "mdice", "iou": {name: v}, "dice": {name: v},
    "confusion_matrix": nested list}``. A class absent from both truth and prediction has
    NaN IoU and Dice (undefined, 0/0) and is left out of ``miou``/``mdice``; a class present in
    only one of them scores 0 and counts. An empty matrix gives NaN accuracy.
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = len(class_names)
    if cm.shape != (n, n):
        raise ValueError(f"confusion matrix shape {cm.shape} does not match {n} class names")
    tp = np.diag(cm).astype(np.float64)
    fp = cm.sum(axis=0) - tp  # predicted as the class, truth another
    fn = cm.sum(axis=1) - tp  # truth the class, predicted another
    union = tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, tp / union, np.nan)
        dice = np.where(union > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    total = cm.sum()
    return {
        "accuracy": float(tp.sum() / total) if total else math.nan,
        "miou": _nanmean(iou),
        "mdice": _nanmean(dice),
        "iou": {name: float(v) for name, v in zip(class_names, iou, strict=True)},
        "dice": {name: float(v) for name, v in zip(class_names, dice, strict=True)},
        "confusion_matrix": cm.tolist(),
    }


def format_table(
    scores_per_image: Mapping[str, Mapping[str, Any]],
    overall: Mapping[str, Any],
    class_names: Sequence[str],
) -> str:
    """Plain-text table: one row per image plus "overall".

    Columns accuracy, mIoU, IoU_<phase>..., Dice_<phase>... (scores as returned by
    :func:`scores_from_confusion`).
    """
    header = [
        "image",
        "accuracy",
        "mIoU",
        *(f"IoU_{c}" for c in class_names),
        *(f"Dice_{c}" for c in class_names),
    ]

    def row(name: str, s: Mapping[str, Any]) -> list[str]:
        values = [s["accuracy"], s["miou"], *(s["iou"][c] for c in class_names)]
        values += [s["dice"][c] for c in class_names]
        return [name, *(f"{v:.4f}" for v in values)]

    rows = [header, *(row(k, v) for k, v in scores_per_image.items()), row("overall", overall)]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]

    def fmt(r: list[str]) -> str:
        return "  ".join(
            [r[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True))]
        )

    lines = [fmt(r) for r in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.insert(len(lines) - 1, "-" * len(lines[0]))
    return "\n".join(lines)
