"""Whole-image prediction: sliding windows with Gaussian blending (MONAI), any image size.

2D nets predict 3D volumes slice by slice along z, a batch of slices at a time; 3D nets slide
a cubic window through the volume. Images are reflect-padded to a multiple of the net's size
multiple and cropped back, so any shape works.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from monai.inferers import sliding_window_inference
from torch import nn
from tqdm.auto import tqdm


def _pad_to_multiple(x: torch.Tensor, multiple: int, n_spatial: int) -> tuple[torch.Tensor, list[int]]:
    """Reflect-pad the last ``n_spatial`` dims of ``x`` up to a multiple; return the pad amounts."""
    shape = x.shape[-n_spatial:]
    extra = [(-s) % multiple for s in shape]
    if not any(extra):
        return x, extra
    pad: list[int] = []
    for e, s in zip(reversed(extra), reversed(shape), strict=True):
        pad += [0, e] if e < s else [0, 0]
    x = torch.nn.functional.pad(x, pad, mode="reflect") if any(pad) else x
    rest = [(-s) % multiple for s in x.shape[-n_spatial:]]
    if any(rest):  # side shorter than the pad: replicate instead
        x = torch.nn.functional.pad(x, [v for e in reversed(rest) for v in (0, e)], mode="replicate")
    return x, extra


class SlidingWindowPredictor:
    """Softmax probabilities of a segmentation net over whole images.

    Args:
        net: (B, 1, *spatial) → (B, n_classes, *spatial) logits; ``net.eval()`` is called.
        spatial_dims: 2 or 3 (the net's).
        size_multiple: input sides must be multiples of this.
        roi_size: window side (clipped to the padded image).
        overlap: fraction of overlap between windows.
        sw_batch_size: windows per forward pass.
        mode: MONAI blend mode, ``gaussian`` (default) or ``constant``.
        slice_batch: 2D nets on volumes: slices processed together.
        device: torch device for the net.
    """

    def __init__(
        self,
        net: nn.Module,
        spatial_dims: int,
        size_multiple: int = 16,
        roi_size: int = 256,
        overlap: float = 0.25,
        sw_batch_size: int = 8,
        mode: str = "gaussian",
        slice_batch: int = 16,
        device: str | torch.device = "cpu",
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if roi_size % size_multiple:
            roi_size = max(size_multiple, roi_size // size_multiple * size_multiple)
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.spatial_dims = spatial_dims
        self.size_multiple = size_multiple
        self.roi_size = roi_size
        self.overlap = overlap
        self.sw_batch_size = sw_batch_size
        self.mode = mode
        self.slice_batch = slice_batch

    def _softmax_net(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)

    @torch.inference_mode()
    def _predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, *spatial) float → (B, C, *spatial) probabilities on the CPU."""
        spatial = x.shape[2:]
        x, _ = _pad_to_multiple(x.to(self.device), self.size_multiple, self.spatial_dims)
        roi = [min(self.roi_size, s) for s in x.shape[2:]]
        probs = sliding_window_inference(
            x, roi, self.sw_batch_size, self._softmax_net, overlap=self.overlap, mode=self.mode,
            progress=False,
        )
        crop = (slice(None), slice(None)) + tuple(slice(0, s) for s in spatial)
        return probs[crop].float().cpu()

    def predict(
        self, image: np.ndarray, on_probabilities: Callable[[slice, np.ndarray], None] | None = None,
        progress: bool = True,
    ) -> np.ndarray:
        """Labels (uint8, the shape of ``image``) of a normalised 2D (y, x) or 3D (z, y, x) image.

        ``on_probabilities(z_slice, probs)`` receives the (C, z, y, x) probabilities of each
        chunk of slices (or (C, y, x) for 2D images) as they are computed, e.g. to save them.
        """
        if image.ndim not in (2, 3) or image.ndim < self.spatial_dims:
            raise ValueError(f"cannot predict a {image.ndim}D image of shape {image.shape} with a {self.spatial_dims}D net")
        if image.ndim == 2 or self.spatial_dims == 3:
            x = torch.from_numpy(np.ascontiguousarray(image, dtype=np.float32))[None, None]
            probs = self._predict_batch(x)[0].numpy()
            if on_probabilities is not None:
                on_probabilities(slice(None), probs)
            return probs.argmax(0).astype(np.uint8)
        labels = np.empty(image.shape, np.uint8)
        starts = range(0, image.shape[0], self.slice_batch)
        for z0 in tqdm(starts, desc="predict", unit="chunk", disable=not progress):
            z = slice(z0, min(z0 + self.slice_batch, image.shape[0]))
            x = torch.from_numpy(np.ascontiguousarray(image[z], dtype=np.float32))[:, None]
            probs = self._predict_batch(x).numpy()  # (b, C, y, x)
            labels[z] = probs.argmax(1)
            if on_probabilities is not None:
                on_probabilities(z, probs.transpose(1, 0, 2, 3))
        return labels
