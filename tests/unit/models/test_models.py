"""Shape, gradient and structure tests for the segmentation nets (small inputs, CPU)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from src.models.nets.lrcsnet import LRCSNet
from src.models.nets.unet import UNet


def _n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _forward_backward(model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """Output has shape (B, num_classes, *spatial) and every parameter receives a gradient."""
    torch.manual_seed(0)
    model.train()
    y = model(x)
    assert y.shape == (x.shape[0], num_classes, *x.shape[2:])
    assert torch.isfinite(y).all()
    target = torch.randint(0, num_classes, (x.shape[0], *x.shape[2:]))
    nn.functional.cross_entropy(y, target).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name} got no gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


@pytest.mark.parametrize("variant", ["shallow", "deep", "shortcut"])
def test_lrcsnet_forward_backward(variant: str) -> None:
    torch.manual_seed(0)
    model = LRCSNet(in_channels=1, num_classes=3, base_filters=4, variant=variant, dropout=0.1)
    _forward_backward(model, torch.randn(2, 1, 16, 24), num_classes=3)


def test_lrcsnet_is_fully_convolutional() -> None:
    model = LRCSNet(base_filters=4, num_classes=2).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 8, 8)).shape == (1, 2, 8, 8)
        assert model(torch.randn(1, 1, 40, 64)).shape == (1, 2, 40, 64)


def test_lrcsnet_shallow_structure() -> None:
    model = LRCSNet(base_filters=8)
    encoder = [model.enc1, model.enc2, model.enc3, model.bottleneck]
    assert not any(
        isinstance(m, nn.modules.batchnorm._BatchNorm) for e in encoder for m in e.modules()
    )
    assert isinstance(model.bottleneck[-1], nn.Sigmoid)
    assert any(isinstance(m, nn.MaxUnpool2d) for m in model.modules())
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    assert (model.spatial_dims, model.size_multiple) == (2, 8)
    # channel plan from DESIGN.md: 1 -> 2C -> 2C -> 4C -> 4C (bottleneck), head C -> classes
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.in_channels, c.out_channels) for c in convs[:4]] == [
        (1, 16),
        (16, 16),
        (16, 32),
        (32, 32),
    ]
    assert (convs[-1].in_channels, convs[-1].out_channels) == (8, 3)


def test_lrcsnet_variants_differ() -> None:
    shallow, deep, shortcut = (
        LRCSNet(base_filters=8, variant=v) for v in ("shallow", "deep", "shortcut")
    )
    # deep only adds dropout (no parameters); shortcuts widen the decoder's first convs
    assert _n_params(deep) == _n_params(shallow)
    assert sum(isinstance(m, nn.Dropout) for m in deep.modules()) == 7  # 3 encoder + 4 decoder
    assert _n_params(shortcut) > _n_params(shallow)


def test_lrcsnet_default_parameter_count() -> None:
    assert _n_params(LRCSNet()) == 878_627


@pytest.mark.parametrize("shape", [(1, 1, 12, 16), (1, 1, 16, 20), (1, 2, 16, 16), (1, 16, 16)])
def test_lrcsnet_bad_input(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"\(1, "):
        LRCSNet(base_filters=4)(torch.randn(*shape))


def test_lrcsnet_bad_variant() -> None:
    with pytest.raises(ValueError, match="variant"):
        LRCSNet(variant="wide")  # type: ignore[arg-type]


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_unet_2d(norm: str) -> None:
    model = UNet(
        spatial_dims=2,
        in_channels=2,
        num_classes=4,
        base_filters=4,
        depth=3,
        norm=norm,
        dropout=0.1,
    )
    assert model.size_multiple == 8
    _forward_backward(model, torch.randn(2, 2, 16, 24), num_classes=4)


def test_unet_3d() -> None:
    model = UNet(spatial_dims=3, num_classes=3, base_filters=2, depth=2)
    assert model.spatial_dims == 3 and model.size_multiple == 4
    _forward_backward(model, torch.randn(2, 1, 8, 8, 12), num_classes=3)


def test_unet_default_channels() -> None:
    model = UNet()
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert max(c.out_channels for c in convs) == 256  # 16C bottleneck with C = 16
    assert _n_params(model) == 1_942_323


def test_unet_bad_input() -> None:
    with pytest.raises(ValueError, match=r"\(1, 1, 24, 32\)"):
        UNet(depth=4, base_filters=2)(torch.randn(1, 1, 24, 32))
    with pytest.raises(ValueError, match="D, H, W"):
        UNet(spatial_dims=3, depth=1, base_filters=2)(torch.randn(1, 1, 8, 8))


@pytest.mark.parametrize("dims", [1, 4])
def test_unet_invalid_spatial_dims(dims: int) -> None:
    with pytest.raises(ValueError, match="spatial_dims"):
        UNet(spatial_dims=dims)
