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
from pathlib import Path

import hydra
from omegaconf import DictConfig

from src.cli import run_command
from src.config import resolve_device
from src.data.io.checks import check_output_file
from src.data.io.volumes import open_volume, output_kind, sample_range, split_key
from src.data.transforms import normalization
from src.inference.volume_prediction import (
    PredictionResult,
    predict_volume,
    resolve_rank,
    return_freed_memory,
)
from src.models.checkpoint import load_segmentation_checkpoint

log = logging.getLogger("predict")


def predict(cfg: DictConfig) -> PredictionResult:
    """Check the input, checkpoint and output, then predict this rank's chunks."""
    return_freed_memory()
    output_kind(cfg.output)
    input_path = str(split_key(cfg.input)[0])
    check_output_file(cfg.output, "output", inputs=[input_path])  # before the model or the volume is read
    source = open_volume(cfg.input)
    module, data_hparams = load_segmentation_checkpoint(cfg.ckpt_path)
    rank, world_size = resolve_rank(cfg.rank, cfg.world_size)
    predictor = hydra.utils.instantiate(cfg.tiling)(
        net=module.net, spatial_dims=module.spatial_dims, size_multiple=module.size_multiple,
        device=resolve_device(cfg.device, per_rank=True))
    norm = normalization(cfg.normalize, data_hparams.get("normalize"))
    with source:
        value_range = sample_range(source, norm["lower"], norm["upper"])
        log.info("predicting %s %s %s with %s (rank %d of %d), grey range %s", source.name, source.shape,
                 source.dtype, module.hparams.get("name", "model"), rank, world_size, value_range)
        ckpt = Path(cfg.ckpt_path).resolve()
        result = predict_volume(
            predictor, source, cfg.output, value_range=value_range, save_probabilities=cfg.save_probabilities,
            save_uncertainty=bool(cfg.get("save_uncertainty", False)),
            class_names=list(module.class_names), rank=rank, world_size=world_size, overwrite=cfg.overwrite,
            progress=cfg.progress, settings={"checkpoint": str(ckpt), "checkpoint_bytes": ckpt.stat().st_size,
                                             **_input_identity(input_path)},
        )
    log.info("rank %d: %d chunks predicted (%d already done) of %d, %.3g voxels/s%s", rank, len(result.computed),
             result.skipped, result.n_chunks, result.voxels_per_s, "; output complete" if result.finished else "")
    return result


def _input_identity(path: str) -> dict:
    """Size and modification time of the input: a resumed run refuses an input that changed
    (the grey range sampled from it is compared too)."""
    info = Path(path).stat()
    return {"input_bytes": info.st_size, "input_mtime_ns": info.st_mtime_ns}


if __name__ == "__main__":
    run_command("predict", predict)
