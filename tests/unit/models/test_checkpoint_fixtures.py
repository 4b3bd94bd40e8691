"""The one checkpoint loader: checkpoints written by the code before the layout refactor
(issue 14, fixtures of commit 88a8ff0) still load and predict the same numbers, and new
checkpoints carry their ``kind``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from src.models.checkpoint import (
    CheckpointError,
    checkpoint_kind,
    load_checkpoint,
    load_reconstruction_checkpoint,
    load_segmentation_checkpoint,
    load_xanes_checkpoint,
)
from src.models.reconstruction import ReconstructionModule
from src.models.segmentation import SegmentationModule
from src.models.spectral import XanesModule

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "checkpoints"
OLD = {"segmentation": "segmentation_lrcsnet.ckpt", "reconstruction": "reconstruction_fbpconvnet.ckpt",
       "xanes": "xanes_edge.ckpt"}
SHORT = {"segmentation": "seg", "reconstruction": "rec", "xanes": "xan"}


def _expected() -> dict[str, np.ndarray]:
    return dict(np.load(FIXTURES / "expected.npz"))


@pytest.mark.parametrize("kind", sorted(OLD))
def test_checkpoints_of_88a8ff0_load_and_predict_the_same(kind):
    exp = _expected()
    path = FIXTURES / OLD[kind]
    assert "kind" not in torch.load(path, weights_only=False)  # written before kinds were stored
    assert checkpoint_kind(path) == kind
    module, data = load_checkpoint(path, kind)
    assert type(module).kind == kind and not module.training and data
    with torch.no_grad():
        out = module(torch.from_numpy(exp[f"x_{SHORT[kind]}"])).numpy()
    np.testing.assert_allclose(out, exp[f"y_{SHORT[kind]}"], rtol=1e-5, atol=1e-6)


def test_the_task_loaders_are_the_one_loader():
    seg, _ = load_segmentation_checkpoint(FIXTURES / OLD["segmentation"], "lrcsnet")
    rec, data = load_reconstruction_checkpoint(FIXTURES / OLD["reconstruction"])
    xan, _ = load_xanes_checkpoint(FIXTURES / OLD["xanes"])
    assert isinstance(seg, SegmentationModule) and seg.class_names == ["NMC", "CBD", "pore"]
    assert isinstance(rec, ReconstructionModule) and data["n_angles"] == 16 and data["image_size"] == 32
    assert isinstance(xan, XanesModule) and xan.energies.size == 15
    with pytest.raises(CheckpointError, match="not a learned-reconstruction checkpoint"):
        load_reconstruction_checkpoint(FIXTURES / OLD["segmentation"])
    with pytest.raises(CheckpointError, match="not a XANES checkpoint"):
        load_xanes_checkpoint(FIXTURES / OLD["reconstruction"])
    with pytest.raises(CheckpointError, match="holds model 'lrcsnet'"):
        load_segmentation_checkpoint(FIXTURES / OLD["segmentation"], "unet")


def test_new_checkpoints_store_their_kind(tmp_path):
    old, _ = load_checkpoint(FIXTURES / OLD["segmentation"])
    assert old.hparams["net"]["_target_"] == "src.models.nets.lrcsnet.LRCSNet"  # the class moved
    ckpt = {"state_dict": old.state_dict(), "hyper_parameters": dict(old.hparams),
            "datamodule_hyper_parameters": {"spatial_dims": 2}}
    old.on_save_checkpoint(ckpt)
    assert ckpt["kind"] == "segmentation"
    ckpt["hyper_parameters"].pop("class_names")  # the kind no longer comes from the hyperparameters
    torch.save(ckpt, tmp_path / "new.ckpt")
    assert checkpoint_kind(tmp_path / "new.ckpt") == "segmentation"
    module, data = load_checkpoint(tmp_path / "new.ckpt")
    assert isinstance(module, SegmentationModule) and data == {"spatial_dims": 2}


def test_net_from_init_needs_a_stored_net_config(tmp_path):
    """net_from_init on a checkpoint without hyper_parameters.net: a clear error naming the file."""
    import pytest
    import torch

    from src.models.checkpoint import CheckpointError, use_checkpoint_net
    from tests.helpers import compose

    path = tmp_path / "bare.ckpt"
    torch.save({"hyper_parameters": {"name": "lrcsnet"}, "state_dict": {}}, path)
    cfg = compose("train", ["experiment=segmentpy_generalist", "logger=none", f"init_from={path}"])
    with pytest.raises(CheckpointError, match=r"bare\.ckpt stores no network config"):
        use_checkpoint_net(cfg)
