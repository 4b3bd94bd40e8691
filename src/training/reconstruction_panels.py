"""Lightning callbacks of the learned reconstruction models (image panels)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl

from src.data.io.figures import hstack_tiles, save_figure
from src.training.callbacks import PanelLogger

__all__ = ["ReconstructionPanelLogger", "recon_panel_rgb", "save_recon_panel_png"]

COLUMNS = ("ground truth", "FBP", "learned", "|learned - truth|")


def _grey(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    g = np.clip((image - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    return np.repeat((g * 255).astype(np.uint8)[..., None], 3, axis=2)


def recon_panel_rgb(truth: np.ndarray, fbp: np.ndarray, recon: np.ndarray, gap: int = 4) -> np.ndarray:
    """``(H, W)`` truth, FBP, learned and error (x2 gain) side by side -> ``(H, 4 W + gaps, 3)`` uint8.

    The three images share the grey scale of the truth (its min..max).
    """
    lo, hi = float(truth.min()), float(truth.max())
    err = np.abs(recon - truth)
    tiles = [_grey(truth, lo, hi), _grey(fbp, lo, hi), _grey(recon, lo, hi),
             _grey(2.0 * err, 0.0, hi - lo)]
    return hstack_tiles(tiles, gap)


def save_recon_panel_png(
    path: str | Path, truths: Sequence[np.ndarray], fbps: Sequence[np.ndarray],
    recons: Sequence[np.ndarray], title: str | None = None,
) -> Path:
    """Rows of (truth, FBP, learned, error) with per-image PSNR in the titles, written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(truths)
    fig, axes = plt.subplots(n, 4, figsize=(12.0, 3.0 * n + (0.5 if title else 0.0)), squeeze=False)
    for r, (tru, fb, rec) in enumerate(zip(truths, fbps, recons, strict=True)):
        lo, hi = float(tru.min()), float(tru.max())
        rng = max(hi - lo, 1e-12)
        for c, (name, img) in enumerate(zip(COLUMNS, (tru, fb, rec, np.abs(rec - tru)), strict=True)):
            ax = axes[r, c]
            if c == 3:
                ax.imshow(img, cmap="magma", vmin=0.0, vmax=0.5 * rng, interpolation="nearest")
            else:
                ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, interpolation="nearest")
            if c in (1, 2):
                psnr = 10 * np.log10(rng**2 / max(float(np.mean((img - tru) ** 2)), 1e-20))
                name = f"{name}: {psnr:.1f} dB"
            ax.set_title(name, fontsize=9)
            ax.set_axis_off()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, path, dpi=90)


class ReconstructionPanelLogger(PanelLogger):
    """Each validation epoch: a panel (truth, FBP, learned, error) of the first validation batch.

    Sent to W&B / TensorBoard and written to ``<run>/panels/val_epoch<NNN>.png``.

    Expects the validation step to return ``{"recon", "fbp"}`` and batches with ``"image"``.

    Args:
        n_samples: rows of the panel.
        every_n_epochs: log every n-th validation epoch.
    """

    output_key = "recon"

    def keep(self, batch: dict, outputs: dict) -> tuple:
        """Truth, FBP and learned reconstruction of the first ``n_samples``, channel dropped."""
        n = self.n_samples
        return batch["image"][:n, 0], outputs["fbp"][:n, 0], outputs["recon"][:n, 0]

    def prepare(self, arrays: tuple) -> tuple:
        """The kept arrays as lists of (H, W) images."""
        return tuple(list(a) for a in arrays)

    def save_png(self, path: Path, arrays: tuple, pl_module: pl.LightningModule, epoch: int) -> None:
        """Write the (truth, FBP, learned, error) panel to ``path``."""
        save_recon_panel_png(path, *arrays, title=f"validation, epoch {epoch}")

    def wandb_images(self, arrays: tuple, pl_module: pl.LightningModule) -> list:
        """``wandb.Image`` objects of the panel, one a sample."""
        import wandb

        return [wandb.Image(recon_panel_rgb(t, f, r), caption=" | ".join(COLUMNS)) for t, f, r in zip(*arrays, strict=True)]

    def rgb_images(self, arrays: tuple, pl_module: pl.LightningModule) -> list[np.ndarray]:
        """(H, W, 3) images (truth, FBP, learned, error), one a sample, for TensorBoard."""
        return [recon_panel_rgb(t, f, r) for t, f, r in zip(*arrays, strict=True)]
