"""Segment a whole volume of any size with a checkpoint, chunk by chunk:
``python predict.py ckpt_path=CKPT input=scan.tif output=scan_seg.zarr [tiling.precision=bf16]``.

The input is read lazily, the labels (and with ``save_probabilities=true`` the probabilities)
are written chunk by chunk, memory stays bounded by a few chunks (independent of the number of
slices) and by ``tiling.max_memory`` (default 2GB: the slice batch and, for slices too large for
one pass, 2D tiles with exact halos; same labels), and a killed run resumes at the first
unfinished chunk. Under torchrun/SLURM (or with ``rank=``/``world_size=``) every rank
predicts its share of the chunks into the one shared output. See ``conf/predict.yaml``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig

from src.config import CONFIG_DIR, setup_config_env
from src.data.volumes import open_volume, output_kind, sample_range
from src.inference.volume_prediction import (
    PredictionResult,
    predict_volume,
    resolve_rank,
    return_freed_memory,
)
from src.models.checkpoint import load_segmentation_checkpoint

log = logging.getLogger("predict")


def prediction_device(name: str) -> str:
    """``auto`` → the GPU of this local rank when there is one, else the CPU."""
    if name != "auto":
        return name
    if torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}"
    return "cpu"


def predict(cfg: DictConfig) -> PredictionResult:
    """Check the input, checkpoint and output, then predict this rank's chunks."""
    return_freed_memory()
    output_kind(cfg.output)
    source = open_volume(cfg.input)
    module, data_hparams = load_segmentation_checkpoint(cfg.ckpt_path)
    rank, world_size = resolve_rank(cfg.rank, cfg.world_size)
    predictor = hydra.utils.instantiate(cfg.tiling)(
        net=module.net, spatial_dims=module.spatial_dims, size_multiple=module.size_multiple,
        device=prediction_device(cfg.device))
    norm = cfg.normalize or data_hparams.get("normalize") or {"lower": 0.5, "upper": 99.5}
    with source:
        value_range = sample_range(source, norm["lower"], norm["upper"])
        log.info("predicting %s %s %s with %s (rank %d of %d), grey range %s", source.name, source.shape,
                 source.dtype, module.hparams.get("name", "model"), rank, world_size, value_range)
        ckpt = Path(cfg.ckpt_path).resolve()
        result = predict_volume(
            predictor, source, cfg.output, value_range=value_range, save_probabilities=cfg.save_probabilities,
            class_names=list(module.class_names), rank=rank, world_size=world_size, overwrite=cfg.overwrite,
            progress=cfg.progress, settings={"checkpoint": str(ckpt), "checkpoint_bytes": ckpt.stat().st_size},
        )
    log.info("rank %d: %d chunks predicted (%d already done) of %d, %.3g voxels/s%s", rank, len(result.computed),
             result.skipped, result.n_chunks, result.voxels_per_s, "; output complete" if result.finished else "")
    return result


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    predict(cfg)


if __name__ == "__main__":
    setup_config_env()
    main()
