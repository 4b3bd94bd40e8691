"""Trained XANES nets applied to a scan, and the body of ``xanes.py``.

:func:`apply_xanes_module` runs a trained :class:`~src.models.spectral.XanesModule` on a
spectral stack slice by slice (energies are the net's channels): the denoiser returns the
denoised stack at the scan's energies (then the per-voxel analysis runs on it), the edge net the
edge-energy map (eV) from its fewer input energies. :func:`xanes_net` loads a checkpoint with
the one loader (:func:`~src.models.checkpoint.load_xanes_checkpoint`) and checks it against the
scan: another kind of checkpoint, or a net trained for energies the scan does not hold, is
refused naming both. :func:`run_xanes` is the whole command: one stack (or table of spectra,
:func:`src.xanes.pipeline.run_stack`) or, with ``series=MANIFEST``, an operando series
(:func:`src.xanes.series.run_series`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig

from src.models.checkpoint import CheckpointError, checkpoint_kind, load_checkpoint
from src.models.spectral import XanesModule
from src.xanes.pipeline import NetOutput, run_stack

__all__ = ["apply_xanes_module", "match_energies", "run_xanes", "xanes_net"]

log = logging.getLogger("xanes")


def match_energies(net_energies: np.ndarray, energies: np.ndarray, tol_eV: float = 0.05,
                   source: str = "checkpoint") -> np.ndarray:
    """Indices of the scan ``energies`` at the net's input energies (within ``tol_eV``).

    Raises:
        CheckpointError: a net energy the scan does not hold (both lists are named).
    """
    net_energies, energies = np.asarray(net_energies, float), np.asarray(energies, float)
    idx = np.abs(energies[None, :] - net_energies[:, None]).argmin(1)
    off = np.abs(energies[idx] - net_energies) > tol_eV
    if off.any():
        raise CheckpointError(
            f"{source}: the net was trained on {net_energies.size} energies "
            f"({net_energies[0]:.1f}-{net_energies[-1]:.1f} eV) and the scan lacks {int(off.sum())} of them "
            f"(e.g. {np.round(net_energies[off][:4], 2).tolist()} eV; the scan has {energies.size} energies "
            f"{energies[0]:.1f}-{energies[-1]:.1f} eV): apply it to a scan at its energies, or train one for these")
    return idx


@torch.no_grad()
def apply_xanes_module(module: XanesModule, stack: np.ndarray, batch: int = 16) -> np.ndarray:
    """A trained XANES net on ``stack`` ``(E_in, [z,] y, x)`` at the net's input energies.

    Args:
        module: the trained module (``task`` ``denoise`` or ``edge``).
        stack: the stack at the net's input energies, in the data's units (divided here by the
            module's ``input_scale``).
        batch: slices per forward pass.

    Returns:
        ``denoise``: the denoised stack, same shape and units; ``edge``: the edge-energy map (eV)
        of shape ``([z,] y, x)``.
    """
    scale = float(module.hparams.get("input_scale", 1.0))
    x = np.asarray(stack, np.float32)
    squeeze = x.ndim == 3
    if squeeze:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"a XANES net needs a stack of images (E, [z,] y, x), got shape {stack.shape}")
    slices = x.transpose(1, 0, 2, 3) / scale  # (z, E, y, x)
    device = next(module.parameters()).device
    mult = int(getattr(module.net, "size_multiple", 1) or 1)
    h, w = slices.shape[-2:]
    ph, pw = (-h) % mult, (-w) % mult
    outs = []
    for i in range(0, slices.shape[0], batch):
        t = torch.from_numpy(np.ascontiguousarray(slices[i:i + batch])).to(device)
        if ph or pw:
            t = torch.nn.functional.pad(t, (0, pw, 0, ph), mode="reflect")
        out = module(t)[..., :h, :w]
        if module.task == "edge":
            outs.append(module.net.to_eV(out)[:, 0].cpu().numpy())
        else:
            outs.append(out.float().cpu().numpy() * scale)
    y = np.concatenate(outs)
    if module.task == "edge":
        return (y[0] if squeeze else y).astype(np.float32)
    y = y.transpose(1, 0, 2, 3)
    return (y[:, 0] if squeeze else y).astype(np.float32)


def xanes_net(ckpt_path: str | Path, device: str = "cpu") -> Callable[[np.ndarray, np.ndarray], NetOutput]:
    """The trained net of ``ckpt_path`` as ``(energies, stack) -> (task, net energies, output)``.

    Raises:
        CheckpointError: the file is not a XANES checkpoint (a segmentation or reconstruction
            one is named as such), or (when applied) the scan lacks the net's energies.
    """
    path = Path(ckpt_path)
    try:
        kind = checkpoint_kind(path)
    except CheckpointError as err:
        if isinstance(err, FileNotFoundError) or "cannot be read" in str(err):
            raise
        kind = None
    if kind not in (None, XanesModule.kind):
        raise CheckpointError(f"ckpt_path {path}: a {kind} checkpoint, not a XANES model (a denoiser or "
                              "edge-energy net trained with experiment=xanes_denoiser / xanes_edge)")
    module, _ = load_checkpoint(path, "xanes", map_location=device)
    assert isinstance(module, XanesModule)

    def apply(energies: np.ndarray, stack: np.ndarray) -> NetOutput:
        if stack.ndim < 3:
            raise ValueError(f"ckpt_path {path}: a net needs images; the input is a table of point spectra")
        idx = match_energies(module.energies, energies, source=f"ckpt_path {path}")
        if module.task == "denoise" and idx.size != energies.size:
            raise CheckpointError(f"ckpt_path {path}: the denoiser was trained on {idx.size} energies, the "
                                  f"scan has {energies.size}; it denoises scans of its own energies only")
        return module.task, module.energies, apply_xanes_module(module, stack[idx])

    log.info("XANES %s net from %s: %d input energies", module.task, path, module.energies.size)
    return apply


def run_xanes(cfg: DictConfig) -> dict[str, Any]:
    """The whole ``xanes.py`` command (see the module doc); returns its summary."""
    if cfg.get("series"):
        from src.xanes.series import run_series

        if cfg.get("ckpt_path"):
            raise ValueError("ckpt_path with series=: apply the net to each state's stack separately")
        return run_series(cfg)
    net = xanes_net(cfg.ckpt_path) if cfg.get("ckpt_path") else None
    return run_stack(cfg, net)
