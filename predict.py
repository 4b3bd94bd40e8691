"""Segment a whole volume of any size with a checkpoint, chunk by chunk:
``python predict.py ckpt_path=CKPT input=scan.tif output=scan_seg.zarr [tiling.precision=bf16]``.

The input is read lazily, the labels (and with ``save_probabilities=true`` the probabilities)
are written chunk by chunk, memory stays bounded by a few chunks (independent of the number of
slices) and by ``tiling.max_memory`` (default 2GB: the slice batch and, for slices too large for
one pass, 2D tiles with exact halos; same labels), and a killed run resumes at the first
unfinished chunk. Under torchrun/SLURM (or with ``rank=``/``world_size=``) every rank
predicts its share of the chunks into the one shared output. See ``conf/predict.yaml``; the
work is :func:`src.inference.volume_prediction.predict_file`.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig, OmegaConf

from src.cli import run_command
from src.inference.volume_prediction import PredictionResult, predict_file


def predict(cfg: DictConfig) -> PredictionResult:
    """Check the input, checkpoint and output, then predict this rank's chunks."""
    return predict_file(
        cfg.ckpt_path, str(cfg.input), str(cfg.output), hydra.utils.instantiate(cfg.tiling), device=str(cfg.device),
        normalize=None if cfg.normalize is None else OmegaConf.to_container(cfg.normalize, resolve=True),
        save_probabilities=bool(cfg.save_probabilities), save_uncertainty=bool(cfg.save_uncertainty),
        rank=cfg.rank, world_size=cfg.world_size, overwrite=bool(cfg.overwrite), progress=bool(cfg.progress))


if __name__ == "__main__":
    run_command("predict", predict)
