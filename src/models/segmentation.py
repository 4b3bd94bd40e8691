"""LightningModule that trains any segmentation net (LRCS-Net, U-Net, MONAI nets) on patches."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from hydra.utils import instantiate
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import MulticlassConfusionMatrix

from src.analysis.metrics import scores_from_confusion
from src.config import to_plain
from src.models.base import TaskModule, build_net


class SegmentationModule(TaskModule):
    """Trains ``net`` with a Dice+CE loss and logs per-phase validation scores.

    Args:
        net: network config (``_target_`` + arguments) or an ``nn.Module``; input (B, 1, ...),
            output logits (B, n_classes, ...). Stored in the checkpoint as config, so
            ``SegmentationModule.load_from_checkpoint(path)`` rebuilds it.
        class_names: phase names; logged metrics are ``val/iou_<name>``, ``val/dice_<name>``.
        loss: loss config (default MONAI DiceCELoss on softmax with one-hot targets).
        optimizer: partial optimizer config (``_partial_: true``), called with the parameters.
        scheduler: partial LR scheduler config called with the optimizer, stepped per epoch.
        inference: sliding-window settings used by ``evaluate.py`` (roi_size, overlap, ...).
        name: model name (run names, checks in ``evaluate.py``).
        channels_last: keep 2D weights and inputs in ``torch.channels_last`` memory format
            (faster convolutions on CPUs with oneDNN, above all under bf16 autocast:
            ``benchmarks/training.py``); the numbers are the same.
    """

    kind = "segmentation"

    def __init__(
        self,
        net: Mapping | nn.Module,
        class_names: Sequence[str] = ("NMC", "CBD", "pore"),
        loss: Mapping | None = None,
        optimizer: Mapping | None = None,
        scheduler: Mapping | None = None,
        inference: Mapping | None = None,
        name: str = "model",
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        net, loss, optimizer, scheduler, inference = map(to_plain, (net, loss, optimizer, scheduler, inference))
        class_names = list(to_plain(class_names))
        self.save_config(net)
        self.net = build_net(net)
        self.class_names = class_names
        self.channels_last = bool(channels_last) and self.spatial_dims == 2
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if loss is None:
            loss = {"_target_": "monai.losses.DiceCELoss", "to_onehot_y": True, "softmax": True}
        self.loss_fn = instantiate(loss)
        self.val_confusion = MulticlassConfusionMatrix(num_classes=len(class_names))
        # the tile-weighted mean validation loss, summed over processes by torchmetrics (exact
        # with uneven shares; Lightning's own mean reduction rounds the summed batch sizes)
        self.val_loss = MeanMetric()

    @property
    def spatial_dims(self) -> int:
        return int(getattr(self.net, "spatial_dims", None) or self.hparams.net.get("spatial_dims", 2))

    @property
    def size_multiple(self) -> int:
        """Input sides must be a multiple of this (pooling depth)."""
        if hasattr(self.net, "size_multiple"):
            return int(self.net.size_multiple)
        strides = self.hparams.net.get("strides") if isinstance(self.hparams.net, Mapping) else None
        if strides:  # MONAI UNet
            return int(np.prod(strides))
        return 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits ``(B, n_classes, ...)`` for a batch ``x`` ``(B, 1, ...)``."""
        if self.channels_last and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        logits = self(batch["image"])
        loss = self.loss_fn(logits, batch["label"])
        self.log_train_loss(loss, len(logits))
        return loss

    def on_validation_epoch_start(self) -> None:
        """Every process validates the weights rank 0 checkpoints: BatchNorm running statistics
        drift apart per process during training (DDP broadcasts them only before each training
        forward, then every process updates them with its own batch)."""
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            for buffer in self.net.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        logits = self(batch["image"])
        loss = self.loss_fn(logits, batch["label"])
        preds = logits.argmax(1)
        self.val_confusion.update(preds, batch["label"][:, 0])
        self.val_loss.update(loss.detach(), weight=len(logits))
        return {"preds": preds}

    def on_validation_epoch_end(self) -> None:
        cm = self.val_confusion.compute().cpu().numpy()
        self.val_confusion.reset()
        scores = scores_from_confusion(cm, self.class_names)
        metrics = {"val/accuracy": scores["accuracy"]}
        for name in self.class_names:
            metrics[f"val/iou_{name}"] = scores["iou"][name]
            metrics[f"val/dice_{name}"] = scores["dice"][name]
        metrics["val/loss"] = float(self.val_loss.compute())
        self.val_loss.reset()
        # the confusion matrix and the loss are already reduced over processes: no sync needed
        self.log_dict({k: float(np.nan_to_num(v)) for k, v in metrics.items()})
        self.log("val/miou", float(np.nan_to_num(scores["miou"])), prog_bar=True)
        self.last_val_scores = scores
