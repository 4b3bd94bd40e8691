"""Whole-image prediction: sliding windows with Gaussian blending (MONAI), any image size.

2D nets predict 3D volumes slice by slice along z, a batch of slices at a time; 3D nets slide
a cubic window through the volume. Images are reflect-padded to a multiple of the net's size
multiple and cropped back, so any shape works.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

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
        tta: test-time augmentation: average the probabilities over the 8 flips/90° rotations
            of each slice (2D nets) or the 8 axis flips of each volume (3D nets).
        slice_axes: 2D nets on volumes: the axes slices are taken along; several axes
            (e.g. ``(0, 1, 2)``, the orthogonal-plane ensemble) average their probabilities.
        mc_samples: Monte-Carlo dropout: average this many forward passes with the net's
            dropout layers active (0: off; the net must have dropout).
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
        tta: bool = False,
        slice_axes: Sequence[int] = (0,),
        mc_samples: int = 0,
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if not slice_axes or any(a not in (0, 1, 2) for a in slice_axes):
            raise ValueError(f"slice_axes must be a non-empty subset of (0, 1, 2), got {list(slice_axes)}")
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
        self.tta = tta
        self.slice_axes = tuple(dict.fromkeys(int(a) for a in slice_axes))
        self.mc_samples = int(mc_samples)
        if self.mc_samples:
            dropout = [m for m in self.net.modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
            if not dropout:
                raise ValueError(f"mc_dropout={mc_samples} needs a net with dropout layers; "
                                 f"{type(net).__name__} has none (use tta=true or slice_axes for an ensemble)")
            for m in dropout:  # active at inference: each pass samples another sub-network
                m.train()

    def _transforms(self) -> list[tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]]:
        """(forward, inverse) pairs on (B, C, *spatial) tensors: identity, or the TTA group."""
        if not self.tta:
            return [(lambda t: t, lambda t: t)]
        if self.spatial_dims == 2:  # dihedral group of the square: 4 rotations x optional flip
            pairs = []
            for k in range(4):
                for flip in (False, True):
                    def fwd(t, k=k, flip=flip):
                        t = torch.rot90(t, k, dims=(-2, -1))
                        return torch.flip(t, dims=(-1,)) if flip else t

                    def inv(t, k=k, flip=flip):
                        t = torch.flip(t, dims=(-1,)) if flip else t
                        return torch.rot90(t, -k, dims=(-2, -1))

                    pairs.append((fwd, inv))
            return pairs
        combos = [tuple(d for d, on in zip((-3, -2, -1), bits, strict=True) if on)
                  for bits in np.ndindex(2, 2, 2)]
        return [((lambda t, d=d: torch.flip(t, d) if d else t), (lambda t, d=d: torch.flip(t, d) if d else t))
                for d in combos]

    def _softmax_net(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=1)

    @torch.inference_mode()
    def _predict_batch(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 1, *spatial) float → (B, C, *spatial) probabilities on the CPU."""
        spatial = x.shape[2:]
        x, _ = _pad_to_multiple(x.to(self.device), self.size_multiple, self.spatial_dims)
        transforms = self._transforms() * max(1, self.mc_samples)
        probs = None
        for fwd, inv in transforms:
            xt = fwd(x)
            roi = [min(self.roi_size, s) for s in xt.shape[2:]]
            p = inv(sliding_window_inference(
                xt, roi, self.sw_batch_size, self._softmax_net, overlap=self.overlap, mode=self.mode,
                progress=False,
            ))
            probs = p if probs is None else probs + p
        probs = probs / len(transforms)
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
        if self.slice_axes != (0,):
            probs = self._orthogonal_probabilities(image, progress)
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

    def _orthogonal_probabilities(self, image: np.ndarray, progress: bool) -> np.ndarray:
        """(C, z, y, x) probabilities of a 2D net averaged over slices along ``slice_axes``."""
        total: np.ndarray | None = None
        for axis in self.slice_axes:
            moved = np.moveaxis(image, axis, 0)
            part: np.ndarray | None = None
            starts = range(0, moved.shape[0], self.slice_batch)
            for s0 in tqdm(starts, desc=f"predict axis {axis}", unit="chunk", disable=not progress):
                sl = slice(s0, min(s0 + self.slice_batch, moved.shape[0]))
                x = torch.from_numpy(np.ascontiguousarray(moved[sl], dtype=np.float32))[:, None]
                probs = self._predict_batch(x).numpy()  # (b, C, ...)
                if part is None:
                    part = np.empty((probs.shape[1], *moved.shape), np.float32)
                part[:, sl] = probs.transpose(1, 0, 2, 3)
            part = np.moveaxis(part, 1, axis + 1)
            total = part if total is None else total + part
        return total / len(self.slice_axes)
