"""Reconstruct a projection stack into a volume:
``python reconstruct.py input=PROJECTIONS [flat=FLATS dark=DARKS] algorithm=fbp|sirt|cgls|tv|learned
[ckpt_path=CKPT] [theta=ANGLES] [center=COLUMN] output=VOLUME.tif``.

Projections are tomopy-ordered ``(angles, rows, columns)`` (TIFF stack, folder of TIFFs, ``.npy``
or HDF5 with ``dataset=``). With flats (and darks) they are normalised and ``-log``-ed; otherwise
they are taken as line integrals (``minus_log=true`` forces the log of transmissions). Optional
ring (stripe) removal, then FBP/SIRT/CGLS/TV (:func:`src.recon.recon`) or a learned net
(LPD/LGD/FBPConvNet checkpoint from ``train.py``) slice by slice. The volume
``(rows, columns, columns)`` in attenuation per voxel is written atomically as float32 TIFF.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from src.cli import run_command
from src.config import resolve_device
from src.data.io import write_tiff
from src.data.io.projections import read_stack, read_theta
from src.recon.fbp import ALGORITHMS, check_projections, recon
from src.recon.preprocessing import minus_log, normalize, remove_stripe_sorting

log = logging.getLogger("reconstruct")

METHODS = (*ALGORITHMS, "learned")


def preprocess(tomo: np.ndarray, cfg: DictConfig) -> np.ndarray:
    """Raw stack -> line integrals ``(angles, rows, cols)``: flat/dark, ``-log``, ring removal."""
    if tomo.ndim == 2:  # one sinogram (angles, cols)
        tomo = tomo[:, None]
    if tomo.ndim != 3:
        raise ValueError(f"{cfg.input}: projections must be (angles, rows, columns), got shape "
                         f"{tomo.shape}")
    flat = read_stack(cfg.flat, cfg.get("flat_dataset")) if cfg.get("flat") else None
    dark = read_stack(cfg.dark, cfg.get("dark_dataset")) if cfg.get("dark") else None
    if dark is not None and flat is None:
        raise ValueError("dark given without flat: give flat=... too")
    if flat is not None:
        tomo = normalize(tomo, flat, dark if dark is not None else np.zeros_like(flat[-1] if flat.ndim == 3 else flat))
    take_log = cfg.get("minus_log", "auto")
    if take_log == "auto":
        take_log = flat is not None
    if take_log:
        tomo = minus_log(tomo)
    if cfg.get("ring_removal", False):
        tomo = remove_stripe_sorting(tomo, size=int(cfg.get("ring_size", 21)))
    return tomo


def reconstruct_learned(
    tomo: np.ndarray, theta: np.ndarray, center: float | None, ckpt_path: str | Path,
    mu: float | None = None, batch_size: int = 16, device: str = "cpu", progress: bool = True,
) -> np.ndarray:
    """Slice-by-slice reconstruction ``(angles, rows, cols) -> (rows, H, W)`` with a trained net.

    The net's sinogram shape (angles, detector bins) must match the data; the measured angles
    and centre replace the training geometry when they differ. Line integrals are divided by the
    training ``mu`` (attenuation per pixel of a unit value) and the output multiplied by it, so
    the volume is in attenuation per voxel like FBP's.
    """
    from src.models.checkpoint import load_reconstruction_checkpoint
    from src.models.nets.reconstruction import make_projector
    from src.simulation.sinograms import attenuation_unit

    dev = torch.device(resolve_device(device))
    module, data_hp = load_reconstruction_checkpoint(ckpt_path, map_location=dev)
    net = module.net
    op = net.projector
    n_angles, rows, cols = tomo.shape
    if (n_angles, cols) != op.sino_shape:
        raise ValueError(
            f"{ckpt_path} was trained on sinograms of {op.sino_shape[0]} angles x "
            f"{op.sino_shape[1]} detector columns, the projections have {n_angles} x {cols}; "
            f"resample or crop the projections, or train with data.n_angles={n_angles} "
            f"data.n_det={cols}")
    new_center = op.center if center is None else float(center)
    if not (np.allclose(theta, op.theta.numpy(), atol=1e-6) and new_center == op.center):
        net.set_projector(make_projector(op.image_shape, theta=theta, n_det=cols, center=new_center))
    unit = attenuation_unit(int(data_hp.get("image_size", op.image_shape[1])),
                            mu if mu is not None else data_hp.get("mu"))
    out = np.empty((rows, *op.image_shape), dtype=np.float32)
    starts = range(0, rows, batch_size)
    with torch.no_grad():
        for z in tqdm(starts, desc=f"{module.hparams.get('name', 'learned')} slices",
                      unit="batch", disable=not progress):
            sino = np.ascontiguousarray(tomo[:, z:z + batch_size].transpose(1, 0, 2)) / unit
            x = module(torch.from_numpy(sino.astype(np.float32))[:, None].to(dev))
            out[z:z + batch_size] = (x[:, 0] * unit).cpu().numpy()
    return out


def reconstruct(cfg: DictConfig) -> np.ndarray:
    """Read, preprocess, reconstruct and write (see the module doc); returns the volume."""
    algorithm = str(cfg.algorithm).lower()
    if algorithm not in METHODS:
        raise ValueError(f"unknown algorithm {cfg.algorithm!r}; choose one of {METHODS}")
    if algorithm == "learned":
        if not cfg.get("ckpt_path"):
            raise ValueError("algorithm=learned needs ckpt_path=... (a train.py checkpoint of "
                             "model=lpd, lgd or fbpconvnet)")
        if not Path(cfg.ckpt_path).is_file():
            raise FileNotFoundError(f"checkpoint {cfg.ckpt_path} does not exist")
    tomo = preprocess(read_stack(cfg.input, cfg.get("dataset")), cfg)
    spec = cfg.get("theta")
    theta = read_theta(OmegaConf.to_container(spec) if OmegaConf.is_config(spec) else spec, tomo.shape[0],
                       cfg.get("theta_unit", "rad"))
    tomo = check_projections(tomo, theta)
    if cfg.get("rows") is not None:
        start, stop = (int(v) for v in cfg.rows)
        tomo = tomo[:, start:stop]
        if tomo.shape[1] == 0:
            raise ValueError(f"rows={list(cfg.rows)} selects no detector row")
    center = cfg.get("center")
    n_angles, rows, cols = tomo.shape
    log.info("%s: %d angles x %d rows x %d columns, %s", cfg.input, n_angles, rows, cols, algorithm)
    if algorithm == "learned":
        volume = reconstruct_learned(tomo, theta, center, cfg.ckpt_path, cfg.get("mu"),
                                     int(cfg.get("batch_size", 16)), str(cfg.get("device", "cpu")),
                                     bool(cfg.get("progress", True)))
    else:
        extra = cfg.get("algorithm_kwargs")
        kwargs = dict(OmegaConf.to_container(extra, resolve=True)) if extra else {}
        step = int(cfg.get("batch_size", 16))
        volume = np.empty((rows, cols, cols), dtype=np.float32)
        for z in tqdm(range(0, rows, step), desc=f"{algorithm} slices", unit="batch",
                      disable=not cfg.get("progress", True)):
            volume[z:z + step] = recon(
                tomo[:, z:z + step], theta, center=center, algorithm=algorithm,
                backend=cfg.get("backend", "torch"), num_iter=cfg.get("num_iter"),
                filter_name=cfg.get("filter_name", "ramp"), chunk=step,
                device=torch.device(resolve_device(str(cfg.get("device", "cpu")))), **kwargs)
    meta = {"algorithm": algorithm, "input": str(cfg.input), "n_angles": n_angles,
            "center": center if center is not None else cols / 2.0,
            "ckpt_path": str(cfg.get("ckpt_path")) if algorithm == "learned" else None,
            "units": "attenuation per voxel"}
    write_tiff(cfg.output, volume, metadata=meta)
    log.info("wrote %s %s", cfg.output, volume.shape)
    return volume


if __name__ == "__main__":
    run_command("reconstruct", reconstruct)
