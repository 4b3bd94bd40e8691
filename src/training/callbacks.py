"""Lightning callbacks of the project."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from src.data.io.figures import panel_rgb, save_panel_png


def orthogonal_slices(batch: np.ndarray) -> list[np.ndarray]:
    """(n, z, y, x) patches → 3n planes: per sample its middle z (y, x), y (z, x) and x (z, y)
    planes, in that order."""
    _, z, y, x = batch.shape
    return [plane for b in batch for plane in (b[z // 2], b[:, y // 2], b[:, :, x // 2])]


class ValidationPanelLogger(pl.Callback):
    """Each validation epoch: a panel (grey, truth, prediction) of the first validation batch,
    sent to W&B / TensorBoard and written to ``<run>/panels/val_epoch<NNN>.png``.

    For 3D patches each sample gives three rows: its middle slices along z, y and x
    (orthogonal planes). W&B receives ``wandb.Image`` objects with the prediction and the
    ground truth as masks carrying the class names.

    Args:
        n_samples: rows of the panel.
        every_n_epochs: log every n-th validation epoch.
    """

    def __init__(self, n_samples: int = 4, every_n_epochs: int = 1) -> None:
        self.n_samples = n_samples
        self.every_n_epochs = every_n_epochs
        self._batch = None

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == 0 and dataloader_idx == 0 and isinstance(outputs, dict) and "preds" in outputs:
            n = self.n_samples
            self._batch = (batch["image"][:n, 0], batch["label"][:n, 0], outputs["preds"][:n])

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        if self._batch is None or trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        images, labels, preds = (t.detach().float().cpu().numpy() for t in self._batch)
        self._batch = None
        captions = [f"sample {i}" for i in range(len(images))]
        if images.ndim == 4:  # 3D patches: the three orthogonal middle planes of every sample
            images, labels, preds = (orthogonal_slices(a) for a in (images, labels, preds))
            captions = [f"sample {i}, {plane}" for i in range(len(captions)) for plane in ("z", "y", "x")]
        labels, preds = [a.astype(int) for a in labels], [a.astype(int) for a in preds]
        epoch = trainer.current_epoch
        names = list(pl_module.class_names)
        save_panel_png(
            Path(trainer.default_root_dir) / "panels" / f"val_epoch{epoch:03d}.png",
            list(images), list(labels), list(preds), names, title=f"validation, epoch {epoch}",
        )
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                import wandb

                class_labels = dict(enumerate(names))
                logger.experiment.log({
                    "val/panel": [
                        wandb.Image(img, caption=caption, masks={
                            "prediction": {"mask_data": prd, "class_labels": class_labels},
                            "ground_truth": {"mask_data": lab, "class_labels": class_labels},
                        })
                        for img, lab, prd, caption in zip(images, labels, preds, captions, strict=True)
                    ],
                    "trainer/global_step": trainer.global_step,
                })
            elif isinstance(logger, TensorBoardLogger):
                for i, (img, lab, prd) in enumerate(zip(images, labels, preds, strict=True)):
                    logger.experiment.add_image(f"val/panel_{i}", panel_rgb(img, lab, prd), epoch, dataformats="HWC")
