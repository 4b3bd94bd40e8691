"""LightningModule that trains the XANES networks (denoiser or edge-energy map).

Trains on simulated stacks (:class:`~src.data.xanes_datamodule.XanesDataModule`).

``task="denoise"``: MSE between the denoised and the noiseless stack; ``task="edge"``: MSE of the
edge energy on NMC voxels. Both log ``val/edge_rmse`` (eV, NMC voxels with a valid fit, against
the ground truth): for the denoiser the per-voxel edge analysis (:mod:`src.xanes.edge`) runs
on the denoised stack, and ``val/edge_rmse_fit`` gives the same analysis on the noisy input (the
baseline); for the edge net ``val/edge_rmse_fit`` is the per-voxel fit of the same reduced
input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from src.config import to_plain
from src.models.base import TaskModule, build_net
from src.simulation.xanes_scan import default_energies, reduced_energy_indices
from src.xanes.edge import EdgeRanges, half_jump_energy_fit, normalize_spectra
from src.xanes.maps import mask_edge_shape

__all__ = ["XanesModule", "fit_edge_energy"]


def fit_edge_energy(
    stack: np.ndarray, energies: np.ndarray, ranges: EdgeRanges, mask: np.ndarray | None = None,
) -> np.ndarray:
    """Per-voxel half-jump edge energy (eV) of a stack ``(E, ...)`` (NaN where none).

    The shared-shape normalisation (shape from the ``mask`` voxels, all when None or empty) and the
    local-cubic estimator, as ``analyze_stack`` with its defaults (without its jump mask).
    """
    flat = stack.reshape(stack.shape[0], -1)
    idx = np.flatnonzero(mask) if mask is not None and np.any(mask) else np.arange(flat.shape[1])
    n = normalize_spectra(energies, stack, ranges, mask_edge_shape(energies, flat, idx, ranges))
    return half_jump_energy_fit(energies, np.nan_to_num(n.norm), ranges.absolute("edge"))


class XanesModule(TaskModule):
    """LightningModule of the XANES networks: the denoiser or the edge-energy map.

    Args: ``net`` config (``_target_``) or module; ``task`` (``denoise`` | ``edge``); ``energies``
    (eV) of the net's input channels (the full scan for the denoiser); ``ranges``:
    :class:`EdgeRanges` fields of the analysis; ``smooth_points``: unused (the edge estimator is the
    local cubic; accepted so that older checkpoints load); ``input_scale``: the data's stack
    divisor; ``nmc_weight`` / ``edge_weight``: weights of the denoiser's squared error on NMC voxels
    and on the energies of the edge window (others 1); optimizer/scheduler partial configs.
    """

    kind = "xanes"

    def __init__(
        self, net: Mapping | nn.Module, task: str = "edge", scan_energies: Sequence[float] | None = None,
        n_input_energies: int | None = None,
        ranges: Mapping[str, Any] | None = None, smooth_points: int = 11, input_scale: float = 0.02,
        nmc_weight: float = 1.0, edge_weight: float = 1.0,
        optimizer: Mapping | None = None, scheduler: Mapping | None = None, name: str = "xanes",
    ) -> None:
        super().__init__()
        net, optimizer, scheduler, ranges, scan_energies = map(
            to_plain, (net, optimizer, scheduler, ranges, scan_energies))
        self.save_config(net)
        if task not in ("denoise", "edge"):
            raise ValueError(f"model.task must be 'denoise' or 'edge', got {task!r}")
        self.task = task
        scan = default_energies() if scan_energies is None else np.asarray(scan_energies, float)
        self.energies = (scan if n_input_energies in (None, scan.size)
                         else scan[reduced_energy_indices(scan, int(n_input_energies))])
        if isinstance(net, Mapping) and net.get("n_energies") is None:  # input channels from the data
            net = {**net, "n_energies": int(self.energies.size)}
            self.hparams["net"] = net
        self.net = build_net(net)
        self.ranges = EdgeRanges(**dict(ranges or {}))
        if getattr(self.net, "n_energies", self.energies.size) != self.energies.size:
            raise ValueError(f"model.net has {self.net.n_energies} input energies, the data "
                             f"{self.energies.size} (data.n_input_energies)")
        self._sums: dict[str, list[float]] = {}
        lo, hi = self.ranges.absolute("edge")
        edge = (self.energies >= lo) & (self.energies <= hi)
        self.register_buffer("energy_weight", torch.from_numpy(
            np.where(edge, float(edge_weight), 1.0).astype(np.float32)).view(1, -1, 1, 1), persistent=False)

    def on_fit_start(self) -> None:
        """Start a fresh spectral-basis denoiser from the principal components of clean spectra.

        A fresh denoiser with a spectral basis (:class:`SpectralSpatialDenoiser`) starts from the
        principal components of the clean training spectra (a few batches).
        """
        if self.task != "denoise" or not hasattr(self.net, "init_spectral_basis") or self.trainer.ckpt_path:
            return
        loader = self.trainer.datamodule.train_dataloader() if self.trainer.datamodule else None
        if loader is None:
            return
        spectra = []
        for i, batch in enumerate(loader):
            clean = batch["clean"]
            spectra.append(clean.permute(0, 2, 3, 1).reshape(-1, clean.shape[1]))
            if i >= 7:
                break
        self.net.init_spectral_basis(torch.cat(spectra).to(self.device))

    def _loss(self, batch: dict[str, torch.Tensor], out: torch.Tensor) -> torch.Tensor:
        if self.task == "denoise":
            voxel = 1.0 + (float(self.hparams.nmc_weight) - 1.0) * batch["mask"].float()  # (B, 1, H, W)
            weight = voxel * self.energy_weight
            return ((out - batch["clean"]) ** 2 * weight).sum() / weight.expand_as(out).sum()
        target = (batch["edge"] - self.net.centre_eV) / self.net.scale_eV
        mask = batch["mask"].float()
        return ((out - target * mask) ** 2 * mask).sum() / mask.sum().clamp_min(1)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Loss of the net's output on a training batch (denoiser or edge-energy task)."""
        loss = self._loss(batch, self(batch["input"]))
        self.log_train_loss(loss, len(batch["input"]))
        return loss

    def predict_edge(self, x: torch.Tensor, mask: np.ndarray | None = None) -> np.ndarray:
        """Edge-energy maps ``(B, H, W)`` eV from a batch of input stacks (either task).

        ``mask`` ``(B, H, W)``: the NMC voxels whose mean spectrum sets the normalisation shape.
        """
        out = self(x)
        if self.task == "edge":
            return self.net.to_eV(out)[:, 0].cpu().numpy()
        stack = out.detach().double().cpu().numpy().transpose(1, 0, 2, 3)  # (E, B, H, W)
        return fit_edge_energy(stack, self.energies, self.ranges, mask=mask)

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Log the validation loss; accumulate the edge-energy errors of the net and of the fit."""
        out = self(batch["input"])
        n = len(out)
        self.log("val/loss", self._loss(batch, out), on_epoch=True, batch_size=n)
        mask = batch["mask"][:, 0].cpu().numpy()
        truth = batch["edge"][:, 0].double().cpu().numpy()
        pred = self.predict_edge(batch["input"], mask)
        noisy = batch["input"].double().cpu().numpy().transpose(1, 0, 2, 3)
        fit = fit_edge_energy(noisy, self.energies, self.ranges, mask=mask)
        for key, est in (("edge_rmse", pred), ("edge_rmse_fit", fit)):
            err = (est - truth)[mask]
            ok = np.isfinite(err)
            acc = self._sums.setdefault(key, [0.0, 0.0, 0.0])
            acc[0] += float(np.sum(err[ok] ** 2))
            acc[1] += float(ok.sum())
            acc[2] += float(ok.size)

    def on_validation_epoch_start(self) -> None:
        """Reset the per-epoch sums of the edge-energy errors."""
        self._sums = {}

    def on_validation_epoch_end(self) -> None:
        """Log the epoch's edge-energy RMSE and valid fraction of the net and of the fit."""
        for key, (sq, n, total) in self._sums.items():
            rmse = float(np.sqrt(sq / n)) if n else float("nan")
            self.log(f"val/{key}", rmse, prog_bar=key == "edge_rmse")
            self.log(f"val/{key.replace('rmse', 'valid_fraction')}", n / max(total, 1.0))
