"""Masked losses and metrics for sparse labels; class checks when fine-tuning from a checkpoint."""

from __future__ import annotations

import pytest
import torch
from monai.losses import DiceCELoss, DiceFocalLoss, DiceLoss

from src.models.checkpoint import CheckpointError, load_pretrained_weights
from src.models.segmentation import IgnoreIndexLoss, SegmentationModule
from tests.helpers import write_segmentation_checkpoint


@pytest.mark.parametrize("loss", [DiceCELoss(to_onehot_y=True, softmax=True), DiceLoss(to_onehot_y=True, softmax=True),
                                  DiceFocalLoss(to_onehot_y=True, softmax=True),
                                  DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=0.0)])
def test_unlabelled_voxels_carry_no_loss(loss):
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16)
    target = torch.randint(0, 3, (2, 1, 16, 16))
    sparse = target.clone()
    sparse[:, :, 8:] = 255
    masked = IgnoreIndexLoss(loss, 255)
    # equal to the dense loss on the labelled half alone, whatever the net says elsewhere
    expected = loss(logits[:, :, :8], target[:, :, :8])
    assert masked(logits, sparse) == pytest.approx(float(expected), rel=1e-5)
    noisy = logits.clone()
    noisy[:, :, 8:] = 50 * torch.randn(2, 3, 8, 16)
    assert masked(noisy, sparse) == pytest.approx(float(expected), rel=1e-5)
    assert masked(logits, target) == pytest.approx(float(loss(logits, target)))  # dense: unchanged
    empty = torch.full_like(target, 255)
    leaf = logits.clone().requires_grad_()
    zero = masked(leaf, empty)
    zero.backward()
    assert float(zero) == 0.0 and leaf.grad is not None and float(leaf.grad.abs().sum()) == 0.0


def test_validation_confusion_skips_unlabelled():
    module = SegmentationModule({"_target_": "src.models.nets.lrcsnet.LRCSNet", "num_classes": 3, "base_filters": 4},
                                ignore_index=255)
    preds = torch.tensor([[0, 1, 2, 2]])
    target = torch.tensor([[0, 1, 255, 255]])
    module.val_confusion.update(preds, target)
    assert module.val_confusion.compute().sum() == 2


def test_fine_tuning_refuses_unseen_classes_unless_head_reinitialised(tmp_path):
    ckpt = write_segmentation_checkpoint(tmp_path / "c.ckpt", base_filters=4)
    net = {"_target_": "src.models.nets.lrcsnet.LRCSNet", "num_classes": 4, "base_filters": 4}
    module = SegmentationModule(net, class_names=["NMC", "CBD", "pore", "crack"])
    with pytest.raises(CheckpointError, match=r"\['crack'\] never seen by it.*reinit_head=true"):
        load_pretrained_weights(module, ckpt)
    before = {k: v.clone() for k, v in module.state_dict().items()}
    n = load_pretrained_weights(module, ckpt, reinit_head=True)
    stored = torch.load(ckpt, weights_only=False)["state_dict"]
    changed = [k for k, v in module.state_dict().items() if k.startswith("net.") and not torch.equal(v, before[k])]
    assert n > 0 and changed and all(torch.equal(module.state_dict()[k], stored[k]) for k in changed)
    same = SegmentationModule({**net, "num_classes": 3}, class_names=["NMC", "CBD", "pore"])
    assert load_pretrained_weights(same, ckpt) == len([k for k in same.state_dict() if k.startswith("net.")])
