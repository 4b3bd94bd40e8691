"""Shared fixtures: tiny labelled volumes on disk and Hydra config composition."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from src.config import compose_config, setup_config_env  # noqa: E402
from src.data.io import write_tiff  # noqa: E402

setup_config_env()

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def shared_data(sub: str) -> Path:
    """A folder of ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"reference data {path} not found (it sits beside the checkout on CI and dev machines)")
    return path


def blob_labels(shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Smooth random 3-phase labels (0 = NMC, 1 = CBD, 2 = pore), uint8."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.standard_normal(shape), 2.0)
    lo, hi = np.quantile(field, [0.35, 0.5])
    return np.where(field < lo, 2, np.where(field < hi, 1, 0)).astype(np.uint8)


def grey_from_labels(labels: np.ndarray, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 1)
    means = np.array([1.0, 0.45, 0.1], np.float32)
    return (ndimage.gaussian_filter(means[labels], 0.7) + rng.normal(0, 0.05, labels.shape)).astype(np.float32)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Folder with two 3D pairs ``vol{i}_image.tif``/``vol{i}_label.tif`` (40, 48, 48) and two
    2D pairs ``{i}.tif``/``{i}_label.tif`` (40, 56)."""
    root = tmp_path_factory.mktemp("tiny")
    for i in range(2):
        lab = blob_labels((40, 48, 48), seed=i)
        write_tiff(root / "3d" / f"vol{i}_image.tif", grey_from_labels(lab, i))
        write_tiff(root / "3d" / f"vol{i}_label.tif", lab)
        lab2 = blob_labels((40, 56), seed=10 + i)
        write_tiff(root / "2d" / f"{i}.tif", grey_from_labels(lab2, 10 + i))
        write_tiff(root / "2d" / f"{i}_label.tif", lab2)
    return root


def compose(config_name: str, overrides: list[str]):
    """Compose a config of conf/ like the command line would (Hydra's compose API)."""
    return compose_config(config_name, overrides)


def tiny_train_overrides(data_dir: Path, out_dir: Path, model: str = "lrcsnet", logger: str = "csv") -> list[str]:
    """Overrides for a seconds-long real fit on the tiny 3D volumes."""
    return [
        f"model={model}",
        f"logger={logger}",
        "data=files",
        f"data.images={data_dir}/3d/vol*_image.tif",
        f"data.labels={data_dir}/3d/vol*_label.tif",
        "data.patch_size=32",
        "data.samples_per_epoch=16",
        "data.batch_size=4",
        "data.val_max_tiles=8",
        "data.val_fraction=0.2",
        "trainer.max_epochs=2",
        "trainer.max_time=null",
        "trainer.log_every_n_steps=1",
        "trainer.enable_model_summary=false",
        f"paths.output_dir={out_dir}",
        f"paths.log_dir={out_dir}/logs",
    ]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (for servers and process groups the tests start)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
