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


class IgnoreIndexLoss(nn.Module):
    """A MONAI segmentation loss that skips unlabelled voxels (target ``ignore_index``).

    Wraps ``DiceCELoss``, ``DiceLoss`` or ``DiceFocalLoss``, for sparse labels and scribbles.

    Dense batches (no unlabelled voxel) go to the wrapped loss unchanged. Otherwise the Dice
    term is MONAI's :class:`~monai.losses.MaskedDiceLoss` with the wrapped loss's settings
    (probabilities and one-hot targets zeroed outside the labelled voxels), cross-entropy is
    ``torch.nn.functional.cross_entropy(..., ignore_index=...)`` and the focal term is averaged
    over labelled voxels. A batch without any labelled voxel gives a zero loss (with gradient).

    Args:
        loss: the MONAI loss, built with ``to_onehot_y=True, softmax=True``.
        ignore_index: label value of unlabelled voxels, or None: dense (the loss unchanged).
    """

    def __init__(self, loss: nn.Module, ignore_index: int | None = 255) -> None:
        super().__init__()
        from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss, FocalLoss, MaskedDiceLoss

        self.loss = loss
        self.ignore_index = ignore_index
        dice = loss if isinstance(loss, DiceLoss) else getattr(loss, "dice", None)
        if isinstance(loss, DiceCELoss) and float(loss.lambda_dice) == 0.0:
            dice = None
        if dice is not None and not isinstance(dice, DiceLoss):
            dice = None
        if not isinstance(loss, DiceCELoss | DiceFocalLoss | DiceLoss):
            self.supported = False
            return
        self.supported = True
        self.masked_dice = None if dice is None else MaskedDiceLoss(
            include_background=dice.include_background, to_onehot_y=False, softmax=True,
            squared_pred=dice.squared_pred, jaccard=dice.jaccard, smooth_nr=dice.smooth_nr,
            smooth_dr=dice.smooth_dr, batch=dice.batch, reduction=dice.reduction)
        self.lambda_dice = float(getattr(loss, "lambda_dice", 1.0))
        self.lambda_ce = float(getattr(loss, "lambda_ce", 0.0)) if isinstance(loss, DiceCELoss) else 0.0
        self.ce_weight = getattr(getattr(loss, "cross_entropy", None), "weight", None)
        focal = getattr(loss, "focal", None) if isinstance(loss, DiceFocalLoss) else None
        self.focal = None if focal is None else FocalLoss(
            include_background=focal.include_background, gamma=focal.gamma, alpha=focal.alpha,
            weight=focal.weight, use_softmax=focal.use_softmax, reduction="none")
        self.lambda_focal = float(getattr(loss, "lambda_focal", 0.0))

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss of ``logits`` (B, C, ...) against ``target`` (B, 1, ...) integer labels."""
        if self.ignore_index is None:
            return self.loss(logits, target)
        mask = target != self.ignore_index
        if bool(mask.all()):
            return self.loss(logits, target)
        if not self.supported:
            raise ValueError(f"sparse labels (ignore_index={self.ignore_index}) need a Dice / Dice+CE / "
                             f"Dice+focal MONAI loss, got {type(self.loss).__name__}")
        if not bool(mask.any()):
            return logits.sum() * 0.0
        clean = torch.where(mask, target, torch.zeros_like(target)).long()
        # one-hot before masking: MONAI's masking of (B, 1) targets would turn them into class 0
        onehot = torch.zeros_like(logits).scatter_(1, clean, 1.0)
        maskf = mask.to(logits.dtype)
        total = logits.new_zeros(())
        if self.masked_dice is not None and self.lambda_dice:
            total = total + self.lambda_dice * self.masked_dice(logits, onehot, maskf)
        if self.lambda_ce:
            weight = None if self.ce_weight is None else self.ce_weight.to(logits)
            total = total + self.lambda_ce * torch.nn.functional.cross_entropy(
                logits, target[:, 0].long(), weight=weight, ignore_index=self.ignore_index)
        if self.focal is not None and self.lambda_focal:
            focal = self.focal(logits, onehot) * maskf
            total = total + self.lambda_focal * focal.sum() / (maskf.sum() * focal.shape[1])
        return total


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
        ignore_index: label value of unlabelled voxels (sparse labels): no loss, no metric;
            None: dense labels.
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
        ignore_index: int | None = None,
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
        self.loss_fn = IgnoreIndexLoss(instantiate(loss), ignore_index)
        self.ignore_index = ignore_index
        self.val_confusion = MulticlassConfusionMatrix(num_classes=len(class_names), ignore_index=ignore_index)
        # the tile-weighted mean validation loss, summed over processes by torchmetrics (exact
        # with uneven shares; Lightning's own mean reduction rounds the summed batch sizes)
        self.val_loss = MeanMetric()

    @property
    def spatial_dims(self) -> int:
        """Number of spatial dimensions of the net (2 or 3; 2 when not given)."""
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
        """Loss of one training batch (logged as the training loss)."""
        logits = self(batch["image"])
        loss = self.loss_fn(logits, batch["label"])
        self.log_train_loss(loss, len(logits))
        return loss

    def on_validation_epoch_start(self) -> None:
        """Broadcast rank 0's buffers, so every process validates the weights rank 0 checkpoints.

        BatchNorm running statistics drift apart per process during training (DDP broadcasts
        them only before each training forward, then every process updates them with its own
        batch).
        """
        if torch.distributed.is_available() and torch.distributed.is_initialized() \
                and torch.distributed.get_world_size() > 1:
            for buffer in self.net.buffers():
                torch.distributed.broadcast(buffer, src=0)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Add one validation batch to the confusion matrix and loss; return its predictions."""
        logits = self(batch["image"])
        loss = self.loss_fn(logits, batch["label"])
        preds = logits.argmax(1)
        self.val_confusion.update(preds, batch["label"][:, 0])
        self.val_loss.update(loss.detach(), weight=len(logits))
        return {"preds": preds}

    def on_validation_epoch_end(self) -> None:
        """Log the validation accuracy, per-class IoU and Dice, loss and mIoU; then reset."""
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
