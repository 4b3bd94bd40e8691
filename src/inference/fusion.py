"""Inference-time graph simplifications that keep the net's function (up to float rounding)."""

from __future__ import annotations

import copy

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def fold_batch_norm(net: nn.Module) -> tuple[nn.Module, int]:
    """A copy of ``net`` (eval mode) with batch norms folded into the preceding convolutions.

    Every batch norm that directly follows a convolution inside an ``nn.Sequential`` is folded into
    that convolution's weight and bias.

    In eval mode a batch norm is the per-channel affine map ``(x - mean) / sqrt(var + eps) *
    gamma + beta``; folded, the convolution computes it at no extra cost (one fewer pass over
    the feature maps). The folded batch norm becomes ``nn.Identity``. ``net`` is not changed.

    Returns:
        (the folded copy, the number of batch norms folded).
    """
    folded = copy.deepcopy(net).eval()
    count = 0
    for module in folded.modules():
        if not isinstance(module, nn.Sequential):
            continue
        names = list(module._modules)
        for first, second in zip(names[:-1], names[1:], strict=True):
            conv, norm = module._modules[first], module._modules[second]
            if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or not norm.track_running_stats:
                continue
            if isinstance(conv, _CONVS) and conv.out_channels == norm.num_features:
                module._modules[first] = fuse_conv_bn_eval(conv, norm)
            elif isinstance(conv, _TRANSPOSED) and conv.out_channels == norm.num_features:
                module._modules[first] = fuse_conv_bn_eval(conv, norm, transpose=True)
            else:
                continue
            module._modules[second] = nn.Identity()
            count += 1
    return folded, count
