"""How consistent are hand labels from one slice to the next?

Before blaming a network for a low score on held-out slices, ask how well the labels can be
predicted at all. For each labelled slice, the same classifier (the random forest on Weka-like
features by default) is trained twice and scored on the same half of that slice:

* **within**: trained on the other half of the *same* slice (the labeller's rules for that slice,
  in a spatially separate region);
* **across**: trained on all *other* slices (what a held-out-slice evaluation measures).

* **oracle** (when the segmenter has ``predict_proba``): the "across" classifier with a
  per-slice bias added to its log-probabilities, the bias chosen to fit *that slice's* labels.
  No method can know this bias in advance; it bounds what a per-slice threshold shift could win.

A large within − across gap means the labels follow rules that change from slice to slice
(different thresholds, different judgement of CBD against pore): no model trained on other
slices can close it, however good. If even the oracle stays near "across", the difference is
not a simple threshold shift either. A small gap with a low "within" means the phases are
not separable from the grey values at all.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

import numpy as np

from src.analysis.metrics import confusion_matrix, scores_from_confusion


class Segmenter(Protocol):
    """What the label studies fit and apply: ``fit(images, labels)``, then ``predict(image)``."""

    def fit(self, images: Sequence[np.ndarray], labels: Sequence[np.ndarray]) -> Any:
        """Fit the segmenter on the images and their label maps."""
        ...

    def predict(self, image: np.ndarray) -> np.ndarray:
        """uint8 labels of ``image``."""
        ...


def _default_segmenter() -> Segmenter:
    from src.analysis.segmenters import RandomForestSegmenter

    return RandomForestSegmenter()


def _miou(pred: np.ndarray, truth: np.ndarray, n: int) -> float:
    return float(scores_from_confusion(confusion_matrix(pred, truth, n), [str(k) for k in range(n)])["miou"])


def oracle_bias(
    log_proba: np.ndarray, classes: np.ndarray, truth: np.ndarray, n_classes: int,
    grid: np.ndarray | None = None, sweeps: int = 2,
) -> tuple[np.ndarray, np.ndarray]:
    """The per-class bias on ``log_proba`` (..., K) that best fits ``truth`` (mIoU), and the labels.

    Coordinate search: for each class but the first (whose bias stays 0), try every value of
    ``grid`` (default -3 … 3 in 0.25 steps) and keep the best; ``sweeps`` passes. ``classes[k]``
    is the label of column k. Returns ``(bias (K,), labels like truth)``.
    """
    grid = np.linspace(-3.0, 3.0, 25) if grid is None else np.asarray(grid, dtype=np.float64)
    classes = np.asarray(classes)
    bias = np.zeros(log_proba.shape[-1])

    def labels(b: np.ndarray) -> np.ndarray:
        return classes[np.argmax(log_proba + b, axis=-1)].astype(np.uint8)

    best = _miou(labels(bias), truth, n_classes)
    for _ in range(sweeps):
        for k in range(1, bias.size):
            for value in grid:
                trial = bias.copy()
                trial[k] = value
                score = _miou(labels(trial), truth, n_classes)
                if score > best:
                    best, bias = score, trial
    return bias, labels(bias)


def _halves(shape: tuple[int, int]) -> tuple[slice, slice]:
    """Column slices of the left (train) and right (score) halves of a 2D slice."""
    w = shape[1] // 2
    return slice(0, w), slice(w, shape[1])


def label_consistency(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    class_names: Sequence[str],
    names: Sequence[str] | None = None,
    make_segmenter: Callable[[], Segmenter] = _default_segmenter,
) -> list[dict[str, Any]]:
    """Within-slice against across-slice scores of each labelled slice (see the module doc).

    Args:
        images: normalised 2D slices (H_i, W_i); at least two.
        labels: integer labels of the same shapes, values in ``[0, len(class_names))``.
        class_names: phase names (label value = index).
        names: a name per slice for the rows (default: its index).
        make_segmenter: returns a fresh, unfitted segmenter (``fit`` on lists of 2D images and
            labels, ``predict`` of a 2D image to labels).

    Returns:
        One dict per slice, ``{"slice", "within": scores, "across": scores}`` (and ``"oracle"``
        when the segmenter has ``predict_proba``) where scores are
        :func:`~src.analysis.metrics.scores_from_confusion` on the right half of the slice, then
        a last row ``"pooled"`` with the confusion matrices of all slices summed.
    """
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} label images")
    if len(images) < 2:
        raise ValueError("label_consistency needs at least two labelled slices")
    names = [str(i) for i in range(len(images))] if names is None else [str(n) for n in names]
    n = len(class_names)
    for name, img, lab in zip(names, images, labels, strict=True):
        if img.ndim != 2 or img.shape != lab.shape:
            raise ValueError(f"slice {name}: image {img.shape} and labels {lab.shape} must be the same 2D shape")
    rows: list[dict[str, Any]] = []
    total: dict[str, np.ndarray] = {}
    for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        left, right = _halves(img.shape)
        truth = np.asarray(lab)[:, right]
        within, across = make_segmenter(), make_segmenter()
        within.fit([img[:, left]], [np.asarray(lab)[:, left]])
        others = [k for k in range(len(images)) if k != i]
        across.fit([images[k] for k in others], [labels[k] for k in others])
        row: dict[str, Any] = {"slice": names[i]}
        for key, model in (("within", within), ("across", across)):
            # predict the whole slice (filters see the same context either way), score the right half
            cm = confusion_matrix(model.predict(img)[:, right], truth, n)
            total[key] = total.get(key, 0) + cm
            row[key] = scores_from_confusion(cm, class_names)
        if hasattr(across, "predict_proba"):
            log_p = np.log(across.predict_proba(img)[:, right] + 1e-3)
            bias, pred = oracle_bias(log_p, across.classes, truth, n)
            cm = confusion_matrix(pred, truth, n)
            total["oracle"] = total.get("oracle", 0) + cm
            row["oracle"] = scores_from_confusion(cm, class_names)
            row["oracle_bias"] = bias.tolist()
        rows.append(row)
    rows.append({"slice": "pooled", **{k: scores_from_confusion(v, class_names) for k, v in total.items()}})
    return rows


def format_consistency_table(rows: Sequence[dict[str, Any]], class_names: Sequence[str]) -> str:
    """Markdown table: per slice, mIoU / accuracy / per-phase IoU within and across, and the gap.

    The oracle-bias mIoU is added when the rows have it.
    """
    oracle = all("oracle" in r for r in rows)
    head = ["slice", "mIoU within", "mIoU across", "gap", *(["mIoU oracle bias"] if oracle else []),
            "acc within", "acc across", *[f"IoU {c} within / across" for c in class_names]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        w, a = r["within"], r["across"]
        cells = [r["slice"], f"{w['miou']:.3f}", f"{a['miou']:.3f}", f"{w['miou'] - a['miou']:+.3f}",
                 *([f"{r['oracle']['miou']:.3f}"] if oracle else []),
                 f"{w['accuracy']:.3f}", f"{a['accuracy']:.3f}",
                 *[f"{w['iou'][c]:.3f} / {a['iou'][c]:.3f}" for c in class_names]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
