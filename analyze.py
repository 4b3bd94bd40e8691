"""3D statistics of segmented volumes:
``python analyze.py volumes=GLOB voxel_size_nm=40 [class_names=[NMC,CBD,pore]] [label_values=[..]] output_dir=DIR``.

Every volume is read and checked (3D, integer labels, values known) before anything is
computed, and all outputs are written at the end, each atomically: ``stats.csv`` (one row per
volume, columns ``<statistic>/<phase>``), ``stats.json`` (nested results, per-particle lists,
histograms, settings), ``units.json`` (unit and meaning per column) and ``stats.png``.
"""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from src.analysis.morphology import check_labels, check_voxel_size, compute_statistics, remap_labels
from src.analysis.statistics_table import (
    flatten_statistics,
    units,
    write_csv_atomic,
    write_json_atomic,
)
from src.config import CONFIG_DIR, setup_config_env
from src.data.io import list_images, read_image

log = logging.getLogger("analyze")


def load_labels(path: Path, class_names: list[str], label_values: list[int] | None) -> np.ndarray:
    """Read a (z, y, x) label volume and return phase indices (uint8); errors name the file."""
    volume = read_image(path)  # memory-mapped where the format allows
    if volume.ndim != 3:
        raise ValueError(f"{path}: expected a 3D (z, y, x) label volume, got shape {volume.shape}")
    if label_values is not None:
        if len(label_values) != len(class_names):
            raise ValueError(f"label_values {label_values} must give one value per class in "
                             f"{class_names}")
        volume = remap_labels(volume, label_values, source=str(path))
    return check_labels(volume, class_names, source=str(path))


def save_figure(path: Path, results: dict[str, dict[str, Any]], class_names: list[str]) -> None:
    """Bar chart of volume fractions per volume and the particle size distributions (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_vf, ax_psd) = plt.subplots(1, 2, figsize=(11, 4))
    names = list(results)
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(class_names))
    for k, name in enumerate(names):
        vf = results[name]["volume_fraction"]
        ax_vf.bar(x + k * width, [vf[c] for c in class_names], width, label=name)
        for phase, part in results[name].get("particles", {}).items():
            d = np.asarray(part["particles"]["diameter_um"])[part["particles"]["used_in_distribution"]]
            if d.size:
                ax_psd.hist(d, bins=30, weights=d**3 / np.sum(d**3), histtype="step",
                            label=f"{name} ({phase}, n={d.size})")
    ax_vf.set_xticks(x + width * (len(names) - 1) / 2, class_names)
    ax_vf.set_ylabel("volume fraction")
    ax_psd.set_xlabel("equivalent-sphere diameter (µm)")
    ax_psd.set_ylabel("volume fraction of particles")
    ax_psd.set_title("particle size distribution (volume-weighted)")
    for ax in (ax_vf, ax_psd):
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp.png")
    try:
        fig.savefig(tmp, dpi=120)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)


def analyze(cfg: DictConfig) -> dict[str, dict[str, Any]]:
    """Compute the statistics of every volume in ``cfg.volumes``; write the tables; return them."""
    class_names = [str(c) for c in cfg.class_names]
    label_values = None if cfg.label_values is None else [int(v) for v in cfg.label_values]
    voxel_nm = check_voxel_size(cfg.voxel_size_nm if not OmegaConf.is_list(cfg.voxel_size_nm)
                                else list(cfg.voxel_size_nm))
    options = OmegaConf.to_container(cfg.stats, resolve=True)
    paths = list_images(cfg.volumes)
    names = [p.stem for p in paths]
    if len(set(names)) != len(names):
        raise ValueError(f"volumes {cfg.volumes!r} give duplicate names {names}; rename them")
    for path in paths:  # check every input before computing or writing anything
        load_labels(path, class_names, label_values)
    results: dict[str, dict[str, Any]] = {}
    for path, name in zip(paths, names, strict=True):
        labels = load_labels(path, class_names, label_values)
        log.info("analysing %s %s", path, labels.shape)
        stats = compute_statistics(labels, class_names, voxel_nm, progress=lambda k: log.info("  %s", k),
                                   **options)
        stats["source"] = str(Path(path).resolve())
        results[name] = stats
        log.info("  done in %.1f s", sum(stats["timings_s"].values()))
    rows = [{"volume": name, **flatten_statistics(stats)} for name, stats in results.items()]
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    columns = write_csv_atomic(out_dir / "stats.csv", rows)
    write_json_atomic(out_dir / "units.json", {"voxel_size_nm": voxel_nm,
                                               "columns": units(columns[1:])})
    write_json_atomic(out_dir / "stats.json", {"class_names": class_names, "label_values": label_values,
                                               "settings": options, "volumes": results})
    if cfg.figure:
        save_figure(out_dir / "stats.png", results, class_names)
    log.info("statistics of %d volume(s) written to %s", len(results), out_dir)
    return results


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="analyze")
def main(cfg: DictConfig) -> None:
    analyze(cfg)


if __name__ == "__main__":
    setup_config_env()
    main()
