"""Lightning callbacks of the project: the panel-logger base and the segmentation panel."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import pytorch_lightning as pl
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from pytorch_lightning.utilities import rank_zero_only

from src.data.io.figures import panel_rgb, save_panel_png


def orthogonal_slices(batch: np.ndarray) -> list[np.ndarray]:
    """(n, z, y, x) patches → 3n planes: per sample its middle z, y and x planes.

    Per sample, in that order: the middle z (y, x), y (z, x) and x (z, y) planes.
    """
    _, z, y, x = batch.shape
    return [plane for b in batch for plane in (b[z // 2], b[:, y // 2], b[:, :, x // 2])]


class PanelLogger(pl.Callback):
    """Each validation epoch: a panel of the first validation batch, saved and logged.

    The panel is written to ``<run>/panels/val_epoch<NNN>.png`` and sent to W&B (``val/panel``) /
    TensorBoard (``val/panel_<i>``). Subclasses say which batch and outputs they keep and how they
    draw.

    Args:
        n_samples: rows of the panel.
        every_n_epochs: log every n-th validation epoch.
    """

    #: the key of the validation step's outputs that marks a batch of this panel's task
    output_key: ClassVar[str] = ""

    def __init__(self, n_samples: int = 4, every_n_epochs: int = 1) -> None:
        self.n_samples = n_samples
        self.every_n_epochs = every_n_epochs
        self._batch: tuple | None = None

    def keep(self, batch: dict, outputs: dict) -> tuple:
        """The tensors of the first ``n_samples`` of the batch to draw."""
        raise NotImplementedError

    def save_png(self, path: Path, arrays: tuple, pl_module: pl.LightningModule, epoch: int) -> None:
        """Write the panel of ``arrays`` (:meth:`keep`'s tensors as numpy) to ``path``."""
        raise NotImplementedError

    def wandb_images(self, arrays: tuple, pl_module: pl.LightningModule) -> list:
        """``wandb.Image`` objects of the panel."""
        raise NotImplementedError

    def rgb_images(self, arrays: tuple, pl_module: pl.LightningModule) -> list[np.ndarray]:
        """(H, W, 3) images of the panel, one a sample, for TensorBoard."""
        raise NotImplementedError

    def prepare(self, arrays: tuple) -> tuple:
        """The arrays as drawn (default: as kept)."""
        return arrays

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        """Keep the first batch of validation dataloader 0 when its outputs carry ``output_key``."""
        if batch_idx == 0 and dataloader_idx == 0 and isinstance(outputs, dict) and self.output_key in outputs:
            self._batch = self.keep(batch, outputs)

    @rank_zero_only
    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        """Draw the kept batch: write the PNG and send the panel to W&B / TensorBoard."""
        if self._batch is None or trainer.sanity_checking or trainer.current_epoch % self.every_n_epochs:
            return
        arrays = self.prepare(tuple(t.detach().float().cpu().numpy() for t in self._batch))
        self._batch = None
        epoch = trainer.current_epoch
        self.save_png(Path(trainer.default_root_dir) / "panels" / f"val_epoch{epoch:03d}.png", arrays, pl_module, epoch)
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.log({"val/panel": self.wandb_images(arrays, pl_module),
                                       "trainer/global_step": trainer.global_step})
            elif isinstance(logger, TensorBoardLogger):
                for i, rgb in enumerate(self.rgb_images(arrays, pl_module)):
                    logger.experiment.add_image(f"val/panel_{i}", rgb, epoch, dataformats="HWC")


class ValidationPanelLogger(PanelLogger):
    """Each validation epoch: a panel (grey, truth, prediction) of the first validation batch.

    Sent to W&B / TensorBoard and written to ``<run>/panels/val_epoch<NNN>.png``.

    For 3D patches each sample gives three rows: its middle slices along z, y and x
    (orthogonal planes). W&B receives ``wandb.Image`` objects with the prediction and the
    ground truth as masks carrying the class names.

    Args:
        n_samples: rows of the panel.
        every_n_epochs: log every n-th validation epoch.
    """

    output_key = "preds"

    def keep(self, batch: dict, outputs: dict) -> tuple:
        """Grey images, labels and predictions of the first ``n_samples``, channel dropped."""
        n = self.n_samples
        return batch["image"][:n, 0], batch["label"][:n, 0], outputs["preds"][:n]

    def prepare(self, arrays: tuple) -> tuple:
        """Lists of images, int labels, int predictions and captions; 3D: three planes a sample."""
        images, labels, preds = arrays
        captions = [f"sample {i}" for i in range(len(images))]
        if images.ndim == 4:  # 3D patches: the three orthogonal middle planes of every sample
            images, labels, preds = (orthogonal_slices(a) for a in (images, labels, preds))
            captions = [f"sample {i}, {plane}" for i in range(len(captions)) for plane in ("z", "y", "x")]
        return list(images), [a.astype(int) for a in labels], [a.astype(int) for a in preds], captions

    def save_png(self, path: Path, arrays: tuple, pl_module: pl.LightningModule, epoch: int) -> None:
        """Write the (grey, truth, prediction) panel with the class names to ``path``."""
        images, labels, preds, _ = arrays
        save_panel_png(path, images, labels, preds, list(pl_module.class_names), title=f"validation, epoch {epoch}")

    def wandb_images(self, arrays: tuple, pl_module: pl.LightningModule) -> list:
        """``wandb.Image`` objects with the prediction and ground truth as class-named masks."""
        import wandb

        class_labels = dict(enumerate(pl_module.class_names))
        return [wandb.Image(img, caption=caption, masks={
                    "prediction": {"mask_data": prd, "class_labels": class_labels},
                    "ground_truth": {"mask_data": lab, "class_labels": class_labels},
                }) for img, lab, prd, caption in zip(*arrays, strict=True)]

    def rgb_images(self, arrays: tuple, pl_module: pl.LightningModule) -> list[np.ndarray]:
        """(H, W, 3) images (grey, truth, prediction), one a sample, for TensorBoard."""
        images, labels, preds, _ = arrays
        return [panel_rgb(img, lab, prd) for img, lab, prd in zip(images, labels, preds, strict=True)]
