"""The one LightningModule base of the task modules (segmentation, reconstruction, XANES).

It holds what every task repeats: the hyperparameters saved from the subclass's ``__init__``
arguments (the net as config, so a checkpoint rebuilds it), the net built from its ``_target_``,
the optimizer and LR scheduler from partial configs, the training-loss logging, and the ``kind``
written into every checkpoint (read by :func:`src.models.checkpoint.load_checkpoint`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from torch import nn

__all__ = ["MOVED_TARGETS", "TaskModule", "build_net", "current_target", "optimizers_from_config"]

#: where the network classes lived before the layout of issue 14: checkpoints store the
#: ``_target_`` of their net, so those saved before the move still build
MOVED_TARGETS = {
    "src.models.lrcsnet.": "src.models.nets.lrcsnet.",
    "src.models.unet.": "src.models.nets.unet.",
    "src.models.recon_nets.": "src.models.nets.reconstruction.",
    "src.models.xanes_nets.": "src.models.nets.spectral.",
}


def current_target(target: str) -> str:
    """The class path ``target`` with a moved module's old path replaced by its new one.

    Args:
        target: a dotted class path, e.g. ``"src.models.lrcsnet.LRCSNet"``.

    Returns:
        The path of the class today, e.g. ``"src.models.nets.lrcsnet.LRCSNet"``.
    """
    for old, new in MOVED_TARGETS.items():
        if target.startswith(old):
            return new + target[len(old):]
    return target


def build_net(net: Mapping | nn.Module) -> nn.Module:
    """An ``nn.Module`` from a config with ``_target_`` (old class paths too), or the module itself.

    Args:
        net: a network config (``_target_`` and arguments) or an ``nn.Module``.

    Returns:
        The network.
    """
    if isinstance(net, nn.Module):
        return net
    if "_target_" not in net:
        raise ValueError(f"model.net needs a _target_ naming the network class, got keys {list(net)}")
    return instantiate({**net, "_target_": current_target(net["_target_"])})


def optimizers_from_config(
    parameters: Iterable[nn.Parameter], optimizer: Mapping | None, scheduler: Mapping | None,
    interval: str = "epoch",
) -> dict[str, Any]:
    """Lightning's ``configure_optimizers`` answer from partial configs (``_partial_: true``).

    Args:
        parameters: the parameters to optimise.
        optimizer: partial optimizer config, called with the parameters; None: Adam, lr 1e-3.
        scheduler: partial LR scheduler config, called with the optimizer; None: no scheduler.
        interval: ``"epoch"`` or ``"step"``, when the scheduler steps.

    Returns:
        ``{"optimizer": ...}``, with ``"lr_scheduler"`` when a scheduler is configured.
    """
    opt = torch.optim.Adam(parameters, lr=1e-3) if optimizer is None else instantiate(optimizer, _convert_="all")(params=parameters)
    if scheduler is None:
        return {"optimizer": opt}
    return {"optimizer": opt, "lr_scheduler": {"scheduler": instantiate(scheduler)(optimizer=opt),
                                               "interval": interval}}


class TaskModule(pl.LightningModule):
    """A LightningModule that trains ``self.net`` on one task.

    Subclasses set :attr:`kind`, call :meth:`save_config` in ``__init__`` (after turning their
    config arguments into plain containers) and set ``self.net`` with :func:`build_net`; their
    hyperparameters ``optimizer``, ``scheduler`` (and ``scheduler_interval`` where they have one)
    drive :meth:`configure_optimizers`.
    """

    #: the kind of checkpoint this module writes (``checkpoint["kind"]``)
    kind: ClassVar[str] = "model"
    net: nn.Module

    def save_config(self, net: Mapping | nn.Module) -> None:
        """Save the calling ``__init__``'s arguments as hyperparameters (not to the logger).

        Args:
            net: the ``net`` argument: a config is saved, an ``nn.Module`` is not.
        """
        frame = inspect.currentframe()
        self.save_hyperparameters(logger=False, ignore=["net"] if isinstance(net, nn.Module) else None,
                                  frame=frame.f_back if frame is not None else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The net's output for a batch ``x`` ``(B, C, ...)``."""
        return self.net(x)

    def log_train_loss(self, loss: torch.Tensor, batch_size: int) -> None:
        """Log ``train/loss`` per step and per epoch (in the progress bar).

        Args:
            loss: the batch's loss (scalar).
            batch_size: the number of samples of the batch.
        """
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch_size)

    def configure_optimizers(self) -> dict[str, Any]:
        """The optimizer and LR scheduler from the ``optimizer``/``scheduler`` hyperparameters."""
        return optimizers_from_config(self.parameters(), self.hparams.get("optimizer"),
                                      self.hparams.get("scheduler"),
                                      self.hparams.get("scheduler_interval", "epoch"))

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Write :attr:`kind` into the checkpoint, for the one loader."""
        checkpoint["kind"] = self.kind
