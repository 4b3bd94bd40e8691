"""Helpers shared by the tests (no test file imports another test file or conftest): tiny
labelled volumes, Hydra config composition, training overrides, the reference data folder,
free ports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from src.config import compose_config

#: the reference data beside the checkout: <checkout>/../shared/data
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
    """A noisy grey image of ``labels`` (NMC bright, pore dark), float32."""
    rng = np.random.default_rng(seed + 1)
    means = np.array([1.0, 0.45, 0.1], np.float32)
    return (ndimage.gaussian_filter(means[labels], 0.7) + rng.normal(0, 0.05, labels.shape)).astype(np.float32)


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


#: image side of the seconds-long reconstruction fits
RECON_SIZE = 32


def recon_overrides(out_dir: Path, model: str, extra: list[str] | None = None) -> list[str]:
    """A seconds-long real fit of a reconstruction model through train.py."""
    net = {"lpd": ["model.net.n_iter=2", "model.net.width=8"],
           "lgd": ["model.net.n_iter=2", "model.net.width=8"],
           "fbpconvnet": ["model.net.base_filters=4", "model.net.depth=2"]}[model]
    return [
        f"model={model}", "data=sinograms", "logger=csv", "callbacks=reconstruction",
        f"data.image_size={RECON_SIZE}", "data.n_angles=16", "data.photons=1e4",
        "data.train_samples=16", "data.val_samples=8", "data.batch_size=4",
        "data.ellipse_fraction=1.0", "data.val_ellipse_fraction=1.0",
        "trainer.max_epochs=1", "trainer.max_time=null", "trainer.log_every_n_steps=1",
        "trainer.enable_model_summary=false",
        f"paths.output_dir={out_dir}", f"paths.log_dir={out_dir}/logs", *net, *(extra or []),
    ]


def write_segmentation_checkpoint(path: Path, base_filters: int = 8,
                                  class_names: tuple[str, ...] = ("NMC", "CBD", "pore")) -> Path:
    """A real (untrained, seeded) LRCS-Net checkpoint as train.py writes it, at ``path``."""
    import torch

    from src.models.segmentation import SegmentationModule

    torch.manual_seed(0)
    net = {"_target_": "src.models.nets.lrcsnet.LRCSNet", "num_classes": len(class_names),
           "base_filters": base_filters}
    module = SegmentationModule(net=net, class_names=list(class_names), name="lrcsnet")
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(),
                "datamodule_hyper_parameters": {"normalize": {"lower": 0.5, "upper": 99.5}}}, path)
    return path
