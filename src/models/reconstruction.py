"""LightningModule that trains a learned reconstruction net (LPD, LGD, FBPConvNet) on sinograms."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from hydra.utils import instantiate
from torch import nn

from src.config import to_plain
from src.models.base import TaskModule, build_net
from src.models.nets.reconstruction import ReconNet
from src.recon.evaluation import recon_metrics
from src.recon.fbp import FILTERS

__all__ = ["ReconstructionModule"]


class ReconstructionModule(TaskModule):
    """Trains ``net`` (sinogram -> image) with an MSE loss against the true slices.

    Logs ``train/loss``, ``val/loss`` and, per held-out slice and averaged, ``val/psnr``,
    ``val/ssim``, ``val/rel_error`` of the net and ``val/psnr_fbp``, ``val/ssim_fbp``,
    ``val/rel_error_fbp`` of the FBP of the same sinogram (the baseline), plus
    ``val/psnr_gain`` (net minus FBP, dB). PSNR/SSIM use ``data_range`` (the true slices span
    [0, 1] in relative attenuation, so 1).

    Args:
        net: network config (``_target_`` + arguments) or a :class:`~src.models.nets.reconstruction.ReconNet`;
            input ``(B, 1, A, n_det)``, output ``(B, 1, H, W)``. Stored as config in the
            checkpoint, so ``ReconstructionModule.load_from_checkpoint(path)`` rebuilds it.
        loss: loss config (default ``torch.nn.MSELoss``).
        optimizer: partial optimizer config (``_partial_: true``), called with the parameters.
        scheduler: partial LR scheduler config called with the optimizer.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        gradient_clip_norm: clip the gradient norm to this (None: off; the trainer's
            ``gradient_clip_val`` wins when set).
        data_range: range of the true values for PSNR/SSIM.
        fbp_filter: filter of the FBP baseline.
        name: model name (run names, checks in ``reconstruct.py``).
    """

    kind = "reconstruction"

    def __init__(
        self,
        net: Mapping | nn.Module,
        loss: Mapping | None = None,
        optimizer: Mapping | None = None,
        scheduler: Mapping | None = None,
        scheduler_interval: str = "epoch",
        gradient_clip_norm: float | None = 1.0,
        data_range: float = 1.0,
        fbp_filter: str = "ramp",
        name: str = "model",
    ) -> None:
        super().__init__()
        net, loss, optimizer, scheduler = map(to_plain, (net, loss, optimizer, scheduler))
        self.save_config(net)
        if scheduler_interval not in ("epoch", "step"):
            raise ValueError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        if fbp_filter not in FILTERS:
            raise ValueError(f"unknown fbp_filter {fbp_filter!r}; choose one of {FILTERS}")
        self.net = build_net(net)
        if not isinstance(self.net, ReconNet):
            raise TypeError(f"model.net must build a src.models.nets.reconstruction.ReconNet, got "
                            f"{type(self.net).__name__}")
        self.loss_fn = instantiate(loss) if loss is not None else nn.MSELoss()
        self.data_range = float(data_range)

    def forward(self, sino: torch.Tensor) -> torch.Tensor:
        """``(B, 1, A, n_det)`` line integrals -> ``(B, 1, H, W)`` image."""
        return self.net(sino)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss of the reconstruction of a training batch against its ground-truth image."""
        pred = self(batch["sinogram"])
        loss = self.loss_fn(pred, batch["image"])
        self.log_train_loss(loss, len(pred))
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        """Log the validation loss and image metrics (and the FBP baseline's); return the images."""
        sino, truth = batch["sinogram"], batch["image"]
        pred = self(sino)
        base = self.net.fbp(sino, self.hparams.fbp_filter)
        n = len(pred)
        self.log("val/loss", self.loss_fn(pred, truth), on_epoch=True, batch_size=n, sync_dist=True)
        ours = recon_metrics(pred, truth, self.data_range)
        ref = recon_metrics(base, truth, self.data_range)
        metrics = {f"val/{k}": v.mean() for k, v in ours.items()}
        metrics |= {f"val/{k}_fbp": v.mean() for k, v in ref.items()}
        metrics["val/psnr_gain"] = (ours["psnr"] - ref["psnr"]).mean()
        self.log("val/psnr", metrics.pop("val/psnr"), on_epoch=True, batch_size=n, sync_dist=True,
                 prog_bar=True)
        self.log_dict(metrics, on_epoch=True, batch_size=n, sync_dist=True)
        # keys differ from the segmentation panel's ("preds"), which therefore ignores them
        return {"recon": pred.detach(), "fbp": base.detach()}

    def configure_gradient_clipping(
        self, optimizer: torch.optim.Optimizer, gradient_clip_val: float | None = None,
        gradient_clip_algorithm: str | None = None,
    ) -> None:
        """Clip gradients, by norm with ``gradient_clip_norm`` unless the trainer sets clipping."""
        if gradient_clip_val is None and self.hparams.gradient_clip_norm is not None:
            gradient_clip_val, gradient_clip_algorithm = self.hparams.gradient_clip_norm, "norm"
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)
