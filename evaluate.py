"""Apply a checkpoint (or a classical baseline) to whole images and score it:
``python evaluate.py ckpt_path=CKPT images=PATH_OR_GLOB [labels=PATH_OR_GLOB] output_dir=DIR``,
``python evaluate.py method=otsu|kmeans|random_forest images=... labels=... [method.train_images=...]``.

Writes ``<name>_seg.tif`` per image; with labels, ``metrics.json`` (overall and per image:
accuracy, miou, iou and dice per phase, confusion matrix) and prints the table; with
``stats=true`` the 3D statistics of every predicted volume (``stats.csv``, ``stats.json``). Every input is
read and checked before anything is written.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

from src.cli import run_command
from src.config import resolve_device
from src.inference.evaluation import (
    SparseLabels,
    WindowSettings,
    baseline_segmenter,
    evaluate_reconstruction,
    evaluate_segmentation,
    model_segmenter,
)
from src.models.checkpoint import checkpoint_kind


def evaluate(cfg: DictConfig) -> dict:
    """Score the checkpoint: segmentation (images -> segmentations, metrics) or reconstruction
    (comparison table on held-out slices); return the metrics."""
    if cfg.method.name == "model" and cfg.ckpt_path is not None and checkpoint_kind(cfg.ckpt_path) == "reconstruction":
        return evaluate_reconstruction([cfg.ckpt_path, *cfg.compare_ckpts], Path(cfg.output_dir),
                                       int(cfg.recon.sirt_iter), int(cfg.recon.tv_iter))
    if cfg.method.name == "model":
        window = WindowSettings(roi_size=OmegaConf.to_container(cfg.roi_size) if OmegaConf.is_config(cfg.roi_size) else cfg.roi_size,
                                overlap=cfg.overlap, sw_batch_size=cfg.sw_batch_size, blend_mode=cfg.blend_mode,
                                slice_batch=int(cfg.slice_batch), tta=bool(cfg.tta), slice_axes=list(cfg.slice_axes),
                                mc_dropout=int(cfg.mc_dropout))

        def load():
            return model_segmenter(cfg.ckpt_path, resolve_device(cfg.device), window,
                                   hydra.utils.instantiate(cfg.tiling) if cfg.chunked else None,
                                   cfg.get("model_name"), bool(cfg.progress))
        class_names = None
    else:
        def load():
            method = cfg.method
            train_labels = method.get("train_labels")  # train_images is mandatory (???) once labelled
            train_images = method.train_images if train_labels is not None and "train_images" in method.keys() else None
            return baseline_segmenter(method.name, lambda: hydra.utils.instantiate(method.segmenter),
                                      list(cfg.class_names), cfg.images, train_images, train_labels,
                                      bool(cfg.save_probabilities))
        class_names = list(cfg.class_names)
    return evaluate_segmentation(
        cfg.images, cfg.labels, Path(cfg.output_dir), load, class_names,
        save_probabilities=bool(cfg.save_probabilities), panels=bool(cfg.panels), stats=bool(cfg.stats),
        voxel_size_nm=cfg.voxel_size_nm, stats_options=OmegaConf.to_container(cfg.statistics, resolve=True),
        sparse=SparseLabels(cfg.ignore_index, None if cfg.label_values is None else [int(v) for v in cfg.label_values],
                            cfg.unlabelled_value),
        save_uncertainty=bool(cfg.save_uncertainty), suggest_region=int(cfg.suggest_region))


if __name__ == "__main__":
    run_command("evaluate", evaluate)
