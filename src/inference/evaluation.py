"""Scoring a trained checkpoint or a classical baseline on whole images, with typed arguments.

This is the body of ``evaluate.py``.

Segmentation (:func:`evaluate_segmentation`): every image/label pair is read and checked before
anything is written; then ``<name>_seg.tif`` per image (``<name>_probs.tif``, ``<name>_panel.png``
when asked), with labels ``metrics.json`` (overall and per image: accuracy, mIoU, IoU and Dice per
phase, confusion matrix) and the printed table, with ``stats`` the 3D statistics of every
predicted volume. Reconstruction (:func:`evaluate_reconstruction`): FBP / SIRT / TV and the
learned checkpoints on the held-out slices of the checkpoint's data.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from src.analysis.metrics import confusion_matrix, format_table, scores_from_confusion
from src.analysis.morphology import compute_statistics
from src.analysis.statistics_table import write_statistics
from src.data.io import write_json, write_text, write_tiff
from src.data.io.checks import check_output_dir
from src.data.io.figures import save_panel_png
from src.data.sources import PathSpec, load_pair, pair_images_labels, pair_key
from src.data.transforms import DEFAULT_NORMALIZE, normalization, normalize_percentile
from src.inference.sliding_window import SlidingWindowPredictor
from src.inference.tiled import TiledPredictor
from src.models.checkpoint import load_reconstruction_checkpoint, load_segmentation_checkpoint

__all__ = [
    "Segmenter",
    "SparseLabels",
    "WindowSettings",
    "baseline_segmenter",
    "build_predictor",
    "evaluate_reconstruction",
    "evaluate_segmentation",
    "model_segmenter",
    "stats_voxel_size",
]

log = logging.getLogger("evaluate")


@dataclass
class Segmenter:
    """What :func:`evaluate_segmentation` segments with.

    Attributes:
        predict: ``predict(image, on_probabilities)``: labels (uint8, shape of ``image``) of a
            normalised image; ``on_probabilities(slice, probs)`` (or None) receives the ``(C, ...)``
            probabilities.
        class_names: the phases, in label order.
        normalize: the percentiles ``{lower, upper}`` mapped to 0 and 1.
        source: the report's fields naming the method (``checkpoint``, ``model``, ...).
        probs_axis: the axis along which the probabilities of a volume's parts are stacked.
        method: ``"model"`` or the baseline's name.
    """

    predict: Callable[[np.ndarray, Callable | None], np.ndarray]
    class_names: list[str]
    normalize: dict[str, float]
    source: dict[str, Any]
    probs_axis: int = 0
    method: str = "model"


@dataclass
class WindowSettings:
    """Sliding-window settings; None: the checkpoint's ``model.inference`` value."""

    roi_size: int | Sequence[int] | None = None
    overlap: float | None = None
    sw_batch_size: int | None = None
    blend_mode: str = "gaussian"
    slice_batch: int = 16
    tta: bool = False
    slice_axes: list[int] = field(default_factory=lambda: [0])
    mc_dropout: int = 0


def stats_voxel_size(image_path: Path, ndim: int, voxel_size_nm: float | None) -> float:
    """The voxel size for the 3D statistics of ``image_path``.

    Args:
        image_path: the image file.
        ndim: its number of dimensions (3 needed).
        voxel_size_nm: the configured voxel size (nm), or None: the ``voxel_size_nm`` of a
            ``<name>.json`` sidecar (as the synthetic volumes have).

    Returns:
        The voxel size in nm.
    """
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


def build_predictor(module: Any, device: str, window: WindowSettings,
                    tiled: Callable[..., TiledPredictor] | None = None) -> SlidingWindowPredictor | TiledPredictor:
    """The predictor of a segmentation module.

    Args:
        module: a :class:`~src.models.segmentation.SegmentationModule`.
        device: torch device name.
        window: sliding-window settings (None fields: the checkpoint's ``inference`` settings).
        tiled: the partial :class:`TiledPredictor` of the ``tiling`` config for tiled
            fully-convolutional chunks (exact halos, whole slices: the path ``predict.py`` uses),
            or None: the sliding window with Gaussian blending, TTA and orthogonal planes.

    Returns:
        The predictor.
    """
    if tiled is not None:
        if window.tta or list(window.slice_axes) != [0] or window.mc_dropout:
            raise ValueError("chunked=true predicts with the net alone: use it without tta=true, slice_axes and mc_dropout")
        return tiled(net=module.net, spatial_dims=module.spatial_dims, size_multiple=module.size_multiple, device=device)
    inference = dict(module.hparams.get("inference") or {})
    return SlidingWindowPredictor(
        module.net, module.spatial_dims, module.size_multiple,
        roi_size=window.roi_size or inference.get("roi_size", 256),
        overlap=window.overlap if window.overlap is not None else inference.get("overlap", 0.25),
        sw_batch_size=window.sw_batch_size or inference.get("sw_batch_size", 8),
        mode=window.blend_mode, slice_batch=window.slice_batch, device=device,
        tta=window.tta, slice_axes=list(window.slice_axes), mc_samples=int(window.mc_dropout),
    )


def model_segmenter(ckpt_path: str | Path | None, device: str, window: WindowSettings,
                    tiled: Callable[..., TiledPredictor] | None = None, model_name: str | None = None,
                    progress: bool = True) -> Segmenter:
    """The checkpoint's predictor (``method=model``).

    Args:
        ckpt_path: the segmentation checkpoint.
        device: torch device name.
        window: sliding-window settings.
        tiled: see :func:`build_predictor`.
        model_name: the model the checkpoint must hold (e.g. ``"lrcsnet"``), or None.
        progress: show progress bars.

    Returns:
        The segmenter with the checkpoint's phases and normalisation.
    """
    if ckpt_path is None:
        raise ValueError("ckpt_path=... is required with method=model (or choose method=otsu|kmeans|random_forest)")
    module, data_hparams = load_segmentation_checkpoint(ckpt_path, expected_model=model_name)
    predictor = build_predictor(module, device, window, tiled)

    def predict(image: np.ndarray, on_probs: Callable | None) -> np.ndarray:
        return predictor.predict(image, on_probs, progress)

    return Segmenter(predict, list(module.class_names), normalization(data_hparams.get("normalize")),
                     {"checkpoint": str(Path(ckpt_path).resolve()), "model": module.hparams.get("name", "model")},
                     probs_axis=1 if module.spatial_dims == 2 else 0)  # where 2D nets stack slices of a volume


def baseline_segmenter(name: str, make: Callable[[], Any], class_names: Sequence[str], images: PathSpec,
                       train_images: PathSpec | None = None, train_labels: PathSpec | None = None,
                       save_probabilities: bool = False) -> Segmenter:
    """Build a classical segmenter (``method=otsu|kmeans|random_forest``), fitted if it learns.

    A learning method is fitted on labelled training slices (read and checked before fitting).

    Args:
        name: the method's name (reports, messages).
        make: builds the segmenter (:mod:`src.analysis.segmenters`).
        class_names: the phases.
        images: the images to be evaluated (to warn when they are training slices too).
        train_images: the training slices of a learning method.
        train_labels: their labels.
        save_probabilities: asked probabilities (an error: baselines give labels only).

    Returns:
        The segmenter (default normalisation).
    """
    if save_probabilities:
        raise ValueError(f"save_probabilities=true needs method=model; method={name} gives labels only")
    class_names = list(class_names)
    norm = dict(DEFAULT_NORMALIZE)
    segmenter = make()
    report: dict[str, Any] = {"checkpoint": None, "model": name}
    if segmenter.needs_labels:
        if train_labels is None:
            raise ValueError(f"method={name} learns from labelled slices: give labels=... or method.train_labels=...")
        train_pairs = pair_images_labels(train_images, train_labels)
        seen = {pair_key(Path(i)) for i, _ in pair_images_labels(images)} & {pair_key(Path(i)) for i, _ in train_pairs}
        if seen:
            log.warning("images %s are also training slices of the %s: their scores are not held-out", sorted(seen), name)
        loaded = [load_pair(i, lab, len(class_names)) for i, lab in train_pairs]
        log.info("fitting %s on %d labelled images", name, len(loaded))
        segmenter.fit([normalize_percentile(i, norm["lower"], norm["upper"]) for i, _ in loaded], [lab for _, lab in loaded])
        report["train_images"] = [str(Path(i).resolve()) for i, _ in train_pairs]

    def predict(image: np.ndarray, on_probs: Callable | None) -> np.ndarray:
        return segmenter.predict(image)

    return Segmenter(predict, class_names, norm, report, method=name)


@dataclass
class SparseLabels:
    """How label files are read: unlabelled voxels and the mapping of stored values.

    ``ignore_index`` marks unlabelled voxels (scored nowhere); ``label_values`` /
    ``unlabelled_value`` map stored values (napari: 0 = unlabelled, 1..K).
    """

    ignore_index: int | None = 255
    label_values: list[int] | None = None
    unlabelled_value: int | None = None

    def load(self, image_path: Path, label_path: Path | None, num_classes: int) -> tuple[np.ndarray, np.ndarray | None]:
        """:func:`~src.data.sources.load_pair` with these settings."""
        return load_pair(image_path, label_path, num_classes, self.label_values, self.unlabelled_value,
                         self.ignore_index)


def _check_inputs(pairs: list[tuple[Path, Path | None]], class_names: list[str], stats: bool,
                  voxel_size_nm: float | None, sparse: SparseLabels | None = None) -> dict[str, float]:
    """Read and check every pair before anything is written; the voxel sizes for ``stats``."""
    voxel_sizes = {}
    sparse = sparse or SparseLabels()
    for image_path, label_path in pairs:
        image, _ = sparse.load(image_path, label_path, len(class_names))
        if stats:
            voxel_sizes[pair_key(Path(image_path))] = stats_voxel_size(Path(image_path), image.ndim, voxel_size_nm)
    return voxel_sizes


def evaluate_segmentation(
    images: PathSpec | None, labels: PathSpec | None, output_dir: Path, load: Callable[[], Segmenter],
    class_names: Sequence[str] | None = None, save_probabilities: bool = False, panels: bool = True,
    stats: bool = False, voxel_size_nm: float | None = None, stats_options: dict[str, Any] | None = None,
    sparse: SparseLabels | None = None, save_uncertainty: bool = False, suggest_region: int = 64,
) -> dict:
    """Segment every image, write the segmentations and, with labels, the metrics.

    Args:
        images: files, folder or glob of 2D ``(y, x)`` or 3D ``(z, y, x)`` images.
        labels: their labels (paired by name or sorted order), or None: predict only.
        output_dir: where the outputs go.
        load: builds the segmenter (:func:`model_segmenter` or :func:`baseline_segmenter`).
        class_names: None: ``load`` first (a checkpoint brings its phases), then the inputs are
            checked; else the inputs are checked with these phases first (before a baseline is
            fitted).
        save_probabilities: also write ``<name>_probs.tif`` ``(C, ...)`` float32.
        panels: write ``<name>_panel.png`` (middle slice: grey, truth, prediction).
        stats: also compute and write the 3D statistics of every predicted volume.
        voxel_size_nm: voxel size (nm) for ``stats`` (else from a ``<name>.json`` sidecar).
        stats_options: keyword arguments of :func:`~src.analysis.morphology.compute_statistics`.
        sparse: how label files are read (unlabelled voxels, value map); sparse labels are
            scored on their labelled voxels only.
        save_uncertainty: also write ``<name>_uncertainty.tif`` (predictive entropy of the
            ensemble's mean probabilities: TTA, orthogonal planes or MC dropout, nats),
            "label here next" (``<name>_suggestions.csv``/``.png``: slices and
            ``suggest_region``² regions ranked by mean entropy, ``suggestions.csv`` over all
            images) and, with labels, calibration (``calibration.json``, ``reliability.png``,
            the ECE in ``metrics.json``).
        suggest_region: side (pixels) of the ranked regions.

    Returns:
        The report written to ``metrics.json`` (empty without labels).
    """
    if images is None:
        raise ValueError("images=... is required for segmentation (files, folder or glob)")
    pairs = pair_images_labels(images, labels)
    check_output_dir(output_dir)  # before the model or any image is read
    sparse = sparse or SparseLabels()
    if class_names is None:  # the checkpoint first (cheap), then the images
        segmenter = load()
        voxel_sizes = _check_inputs(pairs, segmenter.class_names, stats, voxel_size_nm, sparse)
    else:  # the images first, before a forest is fitted
        voxel_sizes = _check_inputs(pairs, list(class_names), stats, voxel_size_nm, sparse)
        segmenter = load()
    if save_uncertainty and segmenter.method != "model":
        raise ValueError(f"save_uncertainty=true needs method=model (probabilities); method={segmenter.method} gives labels only")
    class_names, norm, source = segmenter.class_names, segmenter.normalize, segmenter.source
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    stats_options = dict(stats_options or {})
    per_image: dict[str, dict] = {}
    statistics: dict[str, dict] = {}
    total_cm = np.zeros((len(class_names),) * 2, np.int64)
    calibrations: list[dict] = []
    suggestions: list[dict] = []
    labelled: dict[str, float] = {}
    for image_path, label_path in pairs:
        name = pair_key(Path(image_path))
        image, label = sparse.load(image_path, label_path, len(class_names))
        log.info("segmenting %s %s with %s", image_path, image.shape, source["model"])
        probs_parts: list[np.ndarray] = []
        keep = save_probabilities or save_uncertainty
        on_probs = (lambda _z, p, parts=probs_parts: parts.append(p)) if keep else None
        normalized = normalize_percentile(image, norm["lower"], norm["upper"])
        seg = segmenter.predict(normalized, on_probs)
        write_tiff(output_dir / f"{name}_seg.tif", seg)
        if probs_parts:
            axis = segmenter.probs_axis if image.ndim == 3 and len(probs_parts) > 1 else 0
            probs = probs_parts[0] if len(probs_parts) == 1 else np.concatenate(probs_parts, axis=axis)
            if save_probabilities:
                write_tiff(output_dir / f"{name}_probs.tif", probs.astype(np.float32))
            if save_uncertainty:
                calib, ranked = _write_uncertainty(output_dir, name, normalized, probs, label, sparse.ignore_index,
                                                   suggest_region)
                calibrations += [calib] if calib else []
                suggestions += [{"image": name, **r} for r in ranked]
            del probs
        if panels:
            mid = (lambda a: a[a.shape[0] // 2]) if image.ndim == 3 else (lambda a: a)
            save_panel_png(
                output_dir / f"{name}_panel.png", [mid(np.asarray(image))], [None if label is None else mid(label)],
                [mid(seg)], class_names, title=f"{name} ({source['model']})",
            )
        if stats:
            log.info("3D statistics of %s", name)
            statistics[name] = compute_statistics(seg, class_names, voxel_sizes[name], **stats_options)
        if label is not None:
            cm = confusion_matrix(seg, label, len(class_names), ignore_index=sparse.ignore_index)
            total_cm += cm
            per_image[name] = scores_from_confusion(cm, class_names)
            labelled[name] = float(cm.sum()) / label.size
    if suggestions:
        _write_all_suggestions(output_dir, suggestions)
    if statistics:
        voxel = sorted(set(voxel_sizes.values()))
        write_statistics(output_dir, statistics, class_names, voxel[0] if len(voxel) == 1 else float("nan"), stats_options)
    if not per_image:
        log.info("no labels given: wrote segmentations to %s", output_dir)
        return {}
    overall = scores_from_confusion(total_cm, class_names)
    if calibrations:
        overall["ece"] = _write_calibration(output_dir, calibrations)
    report = {**source, "method": segmenter.method, "class_names": class_names, "overall": overall,
              "per_image": per_image, "labelled_fraction": labelled,
              "sparse_labels": any(f < 1.0 for f in labelled.values()),
              "pairs": {pair_key(Path(i)): {"image": str(i), "label": str(lab)} for i, lab in pairs
                        if lab is not None}}
    write_json(output_dir / "metrics.json", report)
    print(format_table(per_image, overall, class_names))
    log.info("metrics written to %s", output_dir / "metrics.json")
    return report


def _write_uncertainty(output_dir: Path, name: str, image: np.ndarray, probs: np.ndarray, label: np.ndarray | None,
                       ignore_index: int | None, region: int) -> tuple[dict | None, list[dict]]:
    """Entropy map, "label here next" CSV and PNG of one image; its calibration when labelled."""
    from src.analysis.uncertainty import (
        calibration,
        predictive_entropy,
        rank_regions,
        save_suggestions_png,
        write_suggestions_csv,
    )

    entropy = predictive_entropy(probs)
    write_tiff(output_dir / f"{name}_uncertainty.tif", entropy)
    slices, regions = rank_regions(entropy, region)
    write_suggestions_csv(regions, output_dir / f"{name}_suggestions.csv")
    save_suggestions_png(image, entropy, regions, output_dir / f"{name}_suggestions.png", title=name)
    log.info("%s: mean predictive entropy %.3f nats; most uncertain slice %d, region %s", name,
             float(entropy.mean()), slices[0]["slice"], {k: regions[0][k] for k in ("y0", "x0")})
    calib = calibration(probs, label, ignore_index) if label is not None else None
    return (calib if calib and calib["n_voxels"] else None), regions


def _write_all_suggestions(output_dir: Path, rows: list[dict]) -> None:
    """``suggestions.csv``: the regions of every image, ranked together by mean entropy."""
    rows = sorted(rows, key=lambda r: -r["mean_uncertainty"])
    cols = ["rank", "image", "slice", "y0", "y1", "x0", "x1", "mean_uncertainty"]
    lines = [",".join(cols)] + [",".join([str(i + 1), r["image"], *(str(r[c]) for c in cols[2:-1]),
                                          f"{r['mean_uncertainty']:.6g}"]) for i, r in enumerate(rows)]
    write_text(output_dir / "suggestions.csv", "\n".join(lines) + "\n")


def _write_calibration(output_dir: Path, calibrations: list[dict]) -> float:
    """Pool the images' calibration bins and return the pooled expected calibration error.

    Writes ``calibration.json`` and ``reliability.png`` in ``output_dir``.
    """
    from src.analysis.uncertainty import save_reliability_diagram

    n_bins = len(calibrations[0]["bins"])
    pooled = []
    for b in range(n_bins):
        parts = [c["bins"][b] for c in calibrations if c["bins"][b]["count"]]
        count = sum(p["count"] for p in parts)
        pooled.append({"lo": calibrations[0]["bins"][b]["lo"], "hi": calibrations[0]["bins"][b]["hi"], "count": count,
                       "confidence": sum(p["confidence"] * p["count"] for p in parts) / count if count else float("nan"),
                       "accuracy": sum(p["accuracy"] * p["count"] for p in parts) / count if count else float("nan")})
    n = sum(p["count"] for p in pooled)
    ece = sum(p["count"] / n * abs(p["accuracy"] - p["confidence"]) for p in pooled if p["count"]) if n else float("nan")
    report = {"ece": ece, "n_voxels": n, "bins": pooled}
    write_json(output_dir / "calibration.json", report)
    save_reliability_diagram(report, output_dir / "reliability.png", title="labelled voxels:")
    log.info("calibration on %d labelled voxels: ECE %.4f (reliability.png)", n, ece)
    return float(ece)


def evaluate_reconstruction(ckpt_paths: Sequence[str | Path], output_dir: Path, sirt_iter: int = 100,
                            tv_iter: int = 300) -> dict:
    """Score FBP / SIRT / TV and the learned checkpoint(s) on held-out slices.

    The held-out slices are those of the first checkpoint's data; prints the table and writes
    ``recon_metrics.csv``, ``.md`` and ``.json``.

    Args:
        ckpt_paths: reconstruction checkpoints of one geometry (image size, angles).
        output_dir: where the tables go.
        sirt_iter: SIRT iterations.
        tv_iter: TV (PDHG) iterations.

    Returns:
        ``{"checkpoints", "data", "rows"}``: the rows of the table (method, PSNR, SSIM, ...).
    """
    from src.data.sinogram_datamodule import SinogramDataModule
    from src.recon.evaluation import (
        DISPLAY_NAMES,
        compare_on_held_out,
        format_recon_table,
        write_recon_table,
    )

    paths = [Path(p) for p in ckpt_paths]
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
    rows = compare_on_held_out(SinogramDataModule(**data), learned, sirt_iter, tv_iter)
    table = format_recon_table(rows)
    output_dir = Path(output_dir)
    write_recon_table(rows, output_dir / "recon_metrics.csv")
    write_text(output_dir / "recon_metrics.md", table + "\n")
    report = {"checkpoints": [str(p.resolve()) for p in paths], "data": data, "rows": rows}
    write_json(output_dir / "recon_metrics.json", report)
    print(table)
    return report
