"""Uncertainty of a segmentation, its calibration, and where to label next (numpy only).

Probabilities are ``(C, ...)`` float arrays (class axis first, as the predictors write them):
the mean of a TTA / orthogonal-plane ensemble or of MC-dropout samples. The predictive entropy
``H = -sum_c p_c log p_c`` (nats; at most ``log C``) is high where the ensemble is unsure or
disagrees. Calibration compares the confidence ``max_c p_c`` with the accuracy on labelled
voxels (expected calibration error, reliability diagram). "Label here next" ranks the slices and
the square regions of a volume by their mean entropy.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "calibration",
    "expected_calibration_error",
    "predictive_entropy",
    "rank_regions",
    "save_reliability_diagram",
    "save_suggestions_png",
    "write_suggestions_csv",
]


def predictive_entropy(probs: np.ndarray, normalized: bool = False) -> np.ndarray:
    """Entropy of the class probabilities.

    Args:
        probs: ``(C, ...)`` probabilities (summing to 1 over axis 0).
        normalized: divide by ``log C`` (values in 0..1).

    Returns:
        float32 array of shape ``probs.shape[1:]``, nats (or 0..1 when ``normalized``).
    """
    p = np.asarray(probs, dtype=np.float32)
    if p.ndim < 2:
        raise ValueError(f"probabilities must be (C, ...) with C classes first, got shape {p.shape}")
    h = -(p * np.log(np.clip(p, 1e-12, 1.0))).sum(0)
    if normalized:
        h /= np.log(p.shape[0])
    return h.astype(np.float32)


def calibration(probs: np.ndarray, labels: np.ndarray, ignore_index: int | None = 255,
                n_bins: int = 15) -> dict[str, Any]:
    """Reliability of the confidence on labelled voxels.

    Args:
        probs: ``(C, ...)`` probabilities.
        labels: integer labels of shape ``probs.shape[1:]``; ``ignore_index`` = unlabelled.
        ignore_index: label value left out, or None.
        n_bins: equal-width confidence bins on [0, 1].

    Returns:
        ``{"ece", "n_voxels", "bins": [{"lo", "hi", "count", "confidence", "accuracy"}]}``: the
        expected calibration error (count-weighted mean |accuracy - confidence|).
    """
    probs = np.asarray(probs)
    labels = np.asarray(labels)
    if probs.shape[1:] != labels.shape:
        raise ValueError(f"probabilities {probs.shape} do not match labels {labels.shape} (expected (C, *labels.shape))")
    flat_p = probs.reshape(probs.shape[0], -1)
    flat_l = labels.reshape(-1)
    keep = np.ones(flat_l.shape, bool) if ignore_index is None else flat_l != ignore_index
    conf = flat_p[:, keep].max(0)
    correct = flat_p[:, keep].argmax(0) == flat_l[keep]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
    bins, ece = [], 0.0
    n = int(keep.sum())
    for b in range(n_bins):
        sel = which == b
        count = int(sel.sum())
        c = float(conf[sel].mean()) if count else float("nan")
        a = float(correct[sel].mean()) if count else float("nan")
        if count:
            ece += count / n * abs(a - c)
        bins.append({"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count, "confidence": c, "accuracy": a})
    return {"ece": float(ece) if n else float("nan"), "n_voxels": n,
            "accuracy": float(correct.mean()) if n else float("nan"), "bins": bins}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, ignore_index: int | None = 255,
                               n_bins: int = 15) -> float:
    """The expected calibration error of :func:`calibration`."""
    return calibration(probs, labels, ignore_index, n_bins)["ece"]


def save_reliability_diagram(report: dict[str, Any], path: str | Path, title: str = "") -> Path:
    """Reliability diagram PNG: accuracy against confidence per bin, with the diagonal.

    Args:
        report: the result of :func:`calibration`.
        path: the PNG file.
        title: figure title (the ECE is appended).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from src.data.io.figures import save_figure

    bins = [b for b in report["bins"] if b["count"]]
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    width = bins[0]["hi"] - bins[0]["lo"] if bins else 0.1
    ax.bar([b["lo"] for b in bins], [b["accuracy"] for b in bins], width=width, align="edge",
           edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o", color="C3", ms=3, label="bin mean")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (max probability)", ylabel="accuracy",
           title=f"{title} ECE {report['ece']:.3f}".strip())
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)


def rank_regions(uncertainty: np.ndarray, region: int = 64, axis: int = 0,
                 top: int | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Slices and ``region``² squares ranked by mean uncertainty ("label here next").

    Args:
        uncertainty: ``(y, x)`` or ``(z, y, x)`` map (e.g. :func:`predictive_entropy`).
        region: side of the square regions in pixels; a grid of full squares covers the
            slice, the last row and column shifted to end at the border (overlapping the one
            before), so every region has the same area (smaller only in a slice narrower than
            ``region``).
        axis: for volumes, the axis slices are taken along.
        top: keep only the ``top`` regions (None: all).

    Returns:
        ``(slices, regions)``: slices as ``{"rank", "slice", "mean_uncertainty"}`` and regions
        as ``{"rank", "slice", "y0", "y1", "x0", "x1", "mean_uncertainty"}``, most uncertain
        first (a 2D map is slice 0).
    """
    u = np.asarray(uncertainty, dtype=np.float64)
    if u.ndim == 2:
        u = u[None]
    elif u.ndim == 3:
        u = np.moveaxis(u, axis, 0)
    else:
        raise ValueError(f"uncertainty must be a 2D or 3D map, got shape {u.shape}")
    if region < 1:
        raise ValueError(f"region side must be >= 1, got {region}")
    slice_means = u.reshape(u.shape[0], -1).mean(1)
    order = np.argsort(-slice_means, kind="stable")
    slices = [{"rank": r + 1, "slice": int(z), "mean_uncertainty": float(slice_means[z])} for r, z in enumerate(order)]
    def starts(n: int) -> list[int]:  # full squares; the last one ends at the border
        s = list(range(0, max(n - region, 0) + 1, region))
        return s + [n - region] if n > region and s[-1] + region < n else s

    rows = []
    for z in range(u.shape[0]):
        for y0 in starts(u.shape[1]):
            for x0 in starts(u.shape[2]):
                y1, x1 = min(y0 + region, u.shape[1]), min(x0 + region, u.shape[2])
                rows.append({"slice": z, "y0": y0, "y1": y1, "x0": x0, "x1": x1,
                             "mean_uncertainty": float(u[z, y0:y1, x0:x1].mean())})
    rows.sort(key=lambda r: -r["mean_uncertainty"])
    rows = rows[:top] if top is not None else rows
    regions = [{"rank": r + 1, **row} for r, row in enumerate(rows)]
    return slices, regions


def write_suggestions_csv(regions: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """The ranked regions of :func:`rank_regions` as CSV (written atomically)."""
    from src.data.io import write_text

    cols = ["rank", "slice", "y0", "y1", "x0", "x1", "mean_uncertainty"]
    lines = [",".join(cols)] + [",".join(f"{r[c]:.6g}" if c == "mean_uncertainty" else str(r[c]) for c in cols)
                                for r in regions]
    write_text(Path(path), "\n".join(lines) + "\n")
    return Path(path)


def save_suggestions_png(image: np.ndarray, uncertainty: np.ndarray, regions: Sequence[dict[str, Any]],
                         path: str | Path, n: int = 8, title: str = "") -> Path:
    """Save a PNG of the most uncertain slice with its top ``n`` regions outlined and numbered.

    The PNG shows the grey image and uncertainty map of that slice, with the top ``n`` regions
    of that slice outlined and numbered by rank.

    Args:
        image: ``(y, x)`` or ``(z, y, x)`` grey image (slices along axis 0).
        uncertainty: its uncertainty map (same shape).
        regions: ranked regions of :func:`rank_regions` (axis 0).
        path: the PNG file.
        n: regions outlined.
        title: figure title.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from src.data.io.figures import save_figure

    img, unc = np.asarray(image), np.asarray(uncertainty)
    if img.shape != unc.shape:
        raise ValueError(f"image {img.shape} and uncertainty {unc.shape} differ in shape")
    if img.ndim == 2:
        img, unc = img[None], unc[None]
    z = int(regions[0]["slice"]) if regions else 0
    shown = [r for r in regions if r["slice"] == z][:n]
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.6))
    lo, hi = np.percentile(img[z], [1, 99])
    axes[0].imshow(img[z], cmap="gray", vmin=lo, vmax=hi)
    im = axes[1].imshow(unc[z], cmap="magma")
    fig.colorbar(im, ax=axes[1], fraction=0.046, label="predictive entropy (nats)")
    for ax in axes:
        for r in shown:
            ax.add_patch(Rectangle((r["x0"] - 0.5, r["y0"] - 0.5), r["x1"] - r["x0"], r["y1"] - r["y0"],
                                   fill=False, edgecolor="cyan", lw=1.5))
            ax.text(r["x0"] + 2, r["y0"] + 10, str(r["rank"]), color="cyan", fontsize=8, weight="bold")
        ax.set_axis_off()
    axes[0].set_title(f"{title} slice {z}: label here next".strip())
    axes[1].set_title("uncertainty, top regions outlined")
    fig.tight_layout()
    return save_figure(fig, path)
