"""Figures people look at: grey slice | ground truth | prediction panels (PNG)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from src.data.io import atomic_output

#: RGB colours of phases 0, 1, 2, ... (NMC grey-blue, CBD orange, pore dark), then a cycle
PHASE_COLORS = np.array(
    [[70, 130, 180], [255, 165, 0], [30, 30, 30], [46, 139, 87], [220, 20, 60], [148, 103, 189]],
    dtype=np.uint8,
)


def save_figure(fig, path: str | Path, dpi: int = 100) -> Path:
    """Write a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    try:
        with atomic_output(path) as tmp:
            fig.savefig(tmp, dpi=dpi)
    finally:
        plt.close(fig)
    return path


def colorize_labels(label: np.ndarray) -> np.ndarray:
    """(H, W) integer labels → (H, W, 3) uint8 RGB."""
    return PHASE_COLORS[np.asarray(label, dtype=np.int64) % len(PHASE_COLORS)]


def grey_to_rgb(image: np.ndarray, lower: float = 1.0, upper: float = 99.0) -> np.ndarray:
    """(H, W) grey → (H, W, 3) uint8 with percentile contrast stretch."""
    lo, hi = np.percentile(image, [lower, upper])
    g = np.clip((image - lo) / max(hi - lo, 1e-12), 0, 1)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)


def hstack_tiles(tiles: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
    """(H, W, 3) uint8 tiles side by side with white gaps → (H, n*W + gaps, 3)."""
    spacer = np.full((tiles[0].shape[0], gap, 3), 255, np.uint8)
    out = [tiles[0]]
    for t in tiles[1:]:
        out += [spacer, t]
    return np.concatenate(out, axis=1)


def panel_rgb(image: np.ndarray, truth: np.ndarray | None, pred: np.ndarray, gap: int = 4) -> np.ndarray:
    """Side by side (H, W) grey, truth (if any) and prediction → (H, n*W + gaps, 3) uint8."""
    tiles = [grey_to_rgb(image)] + ([colorize_labels(truth)] if truth is not None else []) + [colorize_labels(pred)]
    return hstack_tiles(tiles, gap)


def save_panel_png(
    path: str | Path,
    images: Sequence[np.ndarray],
    truths: Sequence[np.ndarray | None],
    preds: Sequence[np.ndarray],
    class_names: Sequence[str],
    title: str | None = None,
) -> Path:
    """Rows of (grey, truth, prediction) with a phase legend, written atomically as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    n = len(images)
    cols = 3 if any(t is not None for t in truths) else 2
    height = 3.2 * n + 0.5 + (0.5 if title else 0.0)
    fig, axes = plt.subplots(n, cols, figsize=(3.2 * cols, height), squeeze=False)
    for r, (img, tru, prd) in enumerate(zip(images, truths, preds, strict=True)):
        tiles = [("grey", grey_to_rgb(img))]
        if cols == 3:
            tiles.append(("ground truth", colorize_labels(tru) if tru is not None else np.ones((*img.shape, 3))))
        tiles.append(("prediction", colorize_labels(prd)))
        for c, (name, tile) in enumerate(tiles):
            axes[r, c].imshow(tile, interpolation="nearest")
            axes[r, c].set_axis_off()
            if r == 0:
                axes[r, c].set_title(name)
    handles = [Patch(color=PHASE_COLORS[i % len(PHASE_COLORS)] / 255, label=n_) for i, n_ in enumerate(class_names)]
    fig.legend(handles=handles, loc="lower center", ncol=len(class_names), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.45 / height, 1, 1 - (0.45 / height if title else 0.0)))
    return save_figure(fig, path, dpi=100)
