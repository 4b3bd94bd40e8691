"""Apply a checkpoint (or a classical baseline) to whole images and score it:
``python evaluate.py ckpt_path=CKPT images=PATH_OR_GLOB [labels=PATH_OR_GLOB] output_dir=DIR``,
``python evaluate.py method=otsu|kmeans|random_forest images=... labels=... [method.train_images=...]``.

Writes ``<name>_seg.tif`` per image; with labels, ``metrics.json`` (overall and per image:
accuracy, miou, iou and dice per phase, confusion matrix) and prints the table; with
``stats=true`` the 3D statistics of every predicted volume (``stats.csv``, ``stats.json``). Every input is
read and checked before anything is written.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path

import hydra
import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from src.analysis.metrics import confusion_matrix, format_table, scores_from_confusion
from src.analysis.morphology import compute_statistics
from src.analysis.statistics_table import write_statistics
from src.config import CONFIG_DIR, setup_config_env
from src.data.io import write_json, write_text, write_tiff
from src.data.io.figures import save_panel_png
from src.data.sources import load_pair, pair_images_labels, pair_key
from src.data.transforms import normalize_percentile
from src.inference.sliding_window import SlidingWindowPredictor
from src.inference.tiled import TiledPredictor
from src.models.checkpoint import checkpoint_kind, load_segmentation_checkpoint

log = logging.getLogger("evaluate")


def stats_voxel_size(image_path: Path, ndim: int, voxel_size_nm: float | None) -> float:
    """Voxel size for the statistics of ``image_path``: the configured one, else the
    ``voxel_size_nm`` of a ``<name>.json`` sidecar (as the synthetic volumes have)."""
    if ndim != 3:
        raise ValueError(f"stats=true needs 3D (z, y, x) volumes, but {image_path} is {ndim}D")
    if voxel_size_nm is not None:
        return float(voxel_size_nm)
    sidecar = image_path.with_name(pair_key(image_path) + ".json")
    if sidecar.is_file():
        meta = json.loads(sidecar.read_text())
        if "voxel_size_nm" in meta:
            return float(meta["voxel_size_nm"])
    raise ValueError(f"stats=true needs voxel_size_nm=... (nm) for {image_path}: none given and no {sidecar.name} sidecar")


def resolve_device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def build_predictor(cfg: DictConfig, module) -> SlidingWindowPredictor | TiledPredictor:
    """``chunked=true``: tiled fully-convolutional chunks (``tiling`` group: exact halos, whole
    slices, batching, bf16...), the path ``predict.py`` uses for volumes of any size; else the
    sliding window with Gaussian blending, test-time augmentation and orthogonal planes."""
    device = resolve_device(cfg.device)
    if cfg.chunked:
        if cfg.tta or list(cfg.slice_axes) != [0]:
            raise ValueError("chunked=true predicts with the net alone: use it without tta=true and slice_axes")
        return hydra.utils.instantiate(cfg.tiling)(
            net=module.net, spatial_dims=module.spatial_dims, size_multiple=module.size_multiple, device=device)
    inference = dict(module.hparams.get("inference") or {})
    return SlidingWindowPredictor(
        module.net, module.spatial_dims, module.size_multiple,
        roi_size=cfg.roi_size or inference.get("roi_size", 256),
        overlap=cfg.overlap if cfg.overlap is not None else inference.get("overlap", 0.25),
        sw_batch_size=cfg.sw_batch_size or inference.get("sw_batch_size", 8),
        mode=cfg.blend_mode, slice_batch=cfg.slice_batch, device=device,
        tta=cfg.tta, slice_axes=list(cfg.slice_axes),
    )


def evaluate(cfg: DictConfig) -> dict:
    """Score the checkpoint: segmentation (images → segmentations, metrics) or reconstruction
    (comparison table on held-out slices); return the metrics."""
    if cfg.method.name == "model" and cfg.ckpt_path is not None and checkpoint_kind(cfg.ckpt_path) == "reconstruction":
        return evaluate_reconstruction(cfg)
    return evaluate_segmentation(cfg)


def evaluate_reconstruction(cfg: DictConfig) -> dict:
    """FBP / SIRT / TV and the learned checkpoint(s) on the held-out slices of the checkpoint's
    data; prints the table and writes ``recon_metrics.csv``, ``.md`` and ``.json``."""
    from src.models.reconstruction import load_reconstruction_checkpoint
    from src.recon.evaluation import (
        DISPLAY_NAMES,
        compare_on_held_out,
        format_recon_table,
        write_recon_table,
    )
    from src.simulation.sinograms import SinogramDataModule

    paths = [Path(cfg.ckpt_path), *(Path(p) for p in cfg.compare_ckpts)]
    learned, data = {}, None
    for path in paths:  # load and check every checkpoint before computing anything
        module, data_hparams = load_reconstruction_checkpoint(path)
        geometry = {k: data_hparams.get(k) for k in ("image_size", "n_angles")}
        if data is not None and geometry != {k: data.get(k) for k in geometry}:
            raise ValueError(f"checkpoint {path} was trained for {geometry}, but {paths[0]} for "
                             f"{ {k: data.get(k) for k in geometry} }: compare checkpoints of one geometry")
        data = data or data_hparams
        name = DISPLAY_NAMES.get(module.hparams.get("name"), module.hparams.get("name", path.stem))
        learned[name if name not in learned else f"{name} ({path.parent.parent.name})"] = module
    rows = compare_on_held_out(SinogramDataModule(**data), learned, cfg.recon.sirt_iter, cfg.recon.tv_iter)
    table = format_recon_table(rows)
    out_dir = Path(cfg.output_dir)
    write_recon_table(rows, out_dir / "recon_metrics.csv")
    write_text(out_dir / "recon_metrics.md", table + "\n")
    report = {"checkpoints": [str(p.resolve()) for p in paths], "data": data, "rows": rows}
    write_json(out_dir / "recon_metrics.json", report)
    print(table)
    return report


def check_inputs(pairs: list[tuple[Path, Path | None]], class_names: list[str], cfg: DictConfig) -> dict[str, float]:
    """Read and check every image/label pair before anything is written; return the voxel
    sizes for ``stats=true`` (empty otherwise)."""
    voxel_sizes = {}
    for image_path, label_path in pairs:
        image, _ = load_pair(image_path, label_path, len(class_names))
        if cfg.stats:
            voxel_sizes[pair_key(Path(image_path))] = stats_voxel_size(Path(image_path), image.ndim, cfg.voxel_size_nm)
    return voxel_sizes


def load_model_predictor(cfg: DictConfig) -> tuple[Callable, list[str], dict, dict]:
    """method=model: the checkpoint's sliding-window predictor → (predict, class_names,
    normalisation percentiles, report fields)."""
    if cfg.ckpt_path is None:
        raise ValueError("ckpt_path=... is required with method=model (or choose method=otsu|kmeans|random_forest)")
    module, data_hparams = load_segmentation_checkpoint(cfg.ckpt_path, expected_model=cfg.get("model_name"))
    predictor = build_predictor(cfg, module)
    probs_axis = 1 if module.spatial_dims == 2 else 0  # where 2D nets stack slices of a volume

    def predict(image: np.ndarray, on_probs: Callable | None) -> np.ndarray:
        return predictor.predict(image, on_probs, cfg.progress)

    predict.probs_axis = probs_axis  # type: ignore[attr-defined]
    norm = data_hparams.get("normalize") or {"lower": 0.5, "upper": 99.5}
    name = module.hparams.get("name", "model")
    return predict, list(module.class_names), norm, {"checkpoint": str(Path(cfg.ckpt_path).resolve()), "model": name}


def load_baseline_predictor(cfg: DictConfig) -> tuple[Callable, list[str], dict, dict]:
    """method=otsu|kmeans|random_forest: the (fitted) classical segmenter → same as
    :func:`load_model_predictor`. Training slices are read and checked before fitting."""
    if cfg.save_probabilities:
        raise ValueError(f"save_probabilities=true needs method=model; method={cfg.method.name} gives labels only")
    class_names = list(cfg.class_names)
    norm = {"lower": 0.5, "upper": 99.5}
    segmenter = hydra.utils.instantiate(cfg.method.segmenter)
    report: dict = {"checkpoint": None, "model": cfg.method.name}
    if segmenter.needs_labels:
        if cfg.method.get("train_labels") is None:
            raise ValueError(f"method={cfg.method.name} learns from labelled slices: give labels=... or method.train_labels=...")
        train_pairs = pair_images_labels(cfg.method.train_images, cfg.method.train_labels)
        seen = {pair_key(Path(i)) for i, _ in pair_images_labels(cfg.images)} & {pair_key(Path(i)) for i, _ in train_pairs}
        if seen:
            log.warning("images %s are also training slices of the %s: their scores are not held-out", sorted(seen), cfg.method.name)
        loaded = [load_pair(i, lab, len(class_names)) for i, lab in train_pairs]
        log.info("fitting %s on %d labelled images", cfg.method.name, len(loaded))
        segmenter.fit([normalize_percentile(i, norm["lower"], norm["upper"]) for i, _ in loaded], [lab for _, lab in loaded])
        report["train_images"] = [str(Path(i).resolve()) for i, _ in train_pairs]

    def predict(image: np.ndarray, on_probs: Callable | None) -> np.ndarray:
        return segmenter.predict(image)

    return predict, class_names, norm, report


def evaluate_segmentation(cfg: DictConfig) -> dict:
    """Predict every image with the checkpoint or the classical ``method``, write
    segmentations (and metrics when labelled); return the metrics."""
    if cfg.images is None:
        raise ValueError("images=... is required for segmentation (files, folder or glob)")
    method = cfg.method.name
    pairs = pair_images_labels(cfg.images, cfg.labels)
    if method == "model":  # the checkpoint first (cheap), then the images
        predict, class_names, norm, source = load_model_predictor(cfg)
        voxel_sizes = check_inputs(pairs, class_names, cfg)
    else:  # the images first, before a forest is fitted
        voxel_sizes = check_inputs(pairs, list(cfg.class_names), cfg)
        predict, class_names, norm, source = load_baseline_predictor(cfg)
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    stats_options = OmegaConf.to_container(cfg.statistics, resolve=True)
    per_image: dict[str, dict] = {}
    statistics: dict[str, dict] = {}
    total_cm = np.zeros((len(class_names),) * 2, np.int64)
    for image_path, label_path in pairs:
        name = pair_key(Path(image_path))
        image, label = load_pair(image_path, label_path, len(class_names))
        log.info("segmenting %s %s with %s", image_path, image.shape, source["model"])
        probs_parts: list[np.ndarray] = []
        on_probs = (lambda _z, p, parts=probs_parts: parts.append(p)) if cfg.save_probabilities else None
        seg = predict(normalize_percentile(image, norm["lower"], norm["upper"]), on_probs)
        write_tiff(out_dir / f"{name}_seg.tif", seg)
        if probs_parts:
            axis = predict.probs_axis if image.ndim == 3 and len(probs_parts) > 1 else 0
            probs = probs_parts[0] if len(probs_parts) == 1 else np.concatenate(probs_parts, axis=axis)
            write_tiff(out_dir / f"{name}_probs.tif", probs.astype(np.float32))
        if cfg.panels:
            mid = (lambda a: a[a.shape[0] // 2]) if image.ndim == 3 else (lambda a: a)
            save_panel_png(
                out_dir / f"{name}_panel.png", [mid(np.asarray(image))], [None if label is None else mid(label)],
                [mid(seg)], class_names, title=f"{name} ({source['model']})",
            )
        if cfg.stats:
            log.info("3D statistics of %s", name)
            statistics[name] = compute_statistics(seg, class_names, voxel_sizes[name], **stats_options)
        if label is not None:
            cm = confusion_matrix(seg, label, len(class_names))
            total_cm += cm
            per_image[name] = scores_from_confusion(cm, class_names)
    if statistics:
        voxel = sorted(set(voxel_sizes.values()))
        write_statistics(out_dir, statistics, class_names, voxel[0] if len(voxel) == 1 else float("nan"), stats_options)
    if not per_image:
        log.info("no labels given: wrote segmentations to %s", out_dir)
        return {}
    overall = scores_from_confusion(total_cm, class_names)
    report = {**source, "method": method, "class_names": class_names, "overall": overall, "per_image": per_image}
    write_json(out_dir / "metrics.json", report)
    print(format_table(per_image, overall, class_names))
    log.info("metrics written to %s", out_dir / "metrics.json")
    return report


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="evaluate")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    setup_config_env()
    main()
