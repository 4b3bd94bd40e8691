"""Tiled fully-convolutional prediction: chunks on a fixed grid, each predicted with a halo.

A volume (z, y, x) is reflect-padded (virtually: only the region read is padded) to a multiple
of the net's size multiple along the net's axes, and cut into chunks on a grid that depends
only on the volume's shape. Each chunk is predicted from the chunk plus a halo (clipped to the
padded volume) and its core is kept. With ``halo="auto"`` the halo covers the net's receptive
field, so every chunk equals the net applied to the whole padded volume at once (exact).
2D nets predict whole slices (their chunks span y and x unless the slice is larger than the
chunk), a batch of slices per forward pass.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from src.data.io.volumes import VolumeSource
from src.inference.fusion import fold_batch_norm
from src.inference.receptive_field import exact_halo

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: default chunk: 2D nets, slices x in-plane side (capped); 3D nets, a cube
DEFAULT_CHUNK_2D = (16, 1024, 1024)
DEFAULT_CHUNK_3D = (128, 128, 128)


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclass(frozen=True)
class ChunkGrid:
    """Chunks of a (z, y, x) volume. ``padded`` is the shape after padding the net's axes to a
    multiple; ``halo`` is the context read around each chunk (0 along z for 2D nets)."""

    shape: tuple[int, int, int]
    padded: tuple[int, int, int]
    chunk: tuple[int, int, int]
    halo: tuple[int, int, int]

    @property
    def counts(self) -> tuple[int, ...]:
        return tuple(-(-s // c) for s, c in zip(self.shape, self.chunk, strict=True))

    def __len__(self) -> int:
        return int(np.prod(self.counts))

    def core(self, index: int) -> tuple[slice, ...]:
        """The chunk's region of the (unpadded) volume."""
        pos = np.unravel_index(index, self.counts)
        return tuple(slice(int(p) * c, min((int(p) + 1) * c, s)) for p, c, s in zip(pos, self.chunk, self.shape, strict=True))

    def tile(self, index: int) -> tuple[tuple[int, int], ...]:
        """(start, stop) per axis of the net input in padded coordinates: the core (extended to
        the padded end on the last chunk) plus the halo, clipped to the padded volume."""
        bounds = []
        for sl, s, p, h in zip(self.core(index), self.shape, self.padded, self.halo, strict=True):
            stop = p if sl.stop == s else sl.stop
            bounds.append((max(0, sl.start - h), min(p, stop + h)))
        return tuple(bounds)

    def voxels(self, index: int) -> int:
        return int(np.prod([sl.stop - sl.start for sl in self.core(index)]))


def read_padded(source: VolumeSource, bounds: Sequence[tuple[int, int]], shape: Sequence[int]) -> np.ndarray:
    """The region ``bounds`` of the volume reflect-padded at its far ends (numpy's ``reflect``),
    reading only what that region needs."""
    read, pads, crop = [], [], []
    for (a, b), s in zip(bounds, shape, strict=True):
        extra = max(0, b - s)
        r0 = 0 if extra >= s else min(a, max(0, s - 1 - extra))
        read.append(slice(r0, min(b, s)))
        pads.append((0, extra))
        crop.append(slice(a - r0, b - r0))
    region = source.read(tuple(read))
    if any(e for _, e in pads):
        region = np.pad(region, pads, mode="reflect")
    return region[tuple(crop)]


class TiledPredictor:
    """Labels (and class probabilities) of a segmentation net over chunks of a volume.

    Args:
        net: (B, 1, *spatial) → (B, n_classes, *spatial) logits; put in eval mode.
        spatial_dims: 2 (slices) or 3.
        size_multiple: net input sides must be multiples of this.
        chunk: (z, y, x) chunk shape; ``None`` → 16 slices × up to 1024² for 2D nets, 128³ for
            3D nets. Sides along the net's axes are rounded up to the size multiple.
        halo: context voxels per side along the net's axes: ``"auto"`` (the receptive radius,
            exact), an int, or one per net axis. Unused along axes a single chunk spans.
        batch_size: 2D nets: slices per forward pass; ``None``: 2 on CPU (small batches stay in
            cache and run fastest there), 8 on GPU.
        device: torch device; ``precision``: ``fp32``, ``bf16`` or ``fp16`` (autocast).
        channels_last: channels-last memory format for net and inputs.
        fuse_batch_norm: fold batch norms into the preceding convolutions
            (:func:`~src.inference.fusion.fold_batch_norm`; same function, fewer passes).
        compile: ``torch.compile`` the net (fuses the remaining element-wise layers; a one-off
            compile of seconds to a minute, worth it for volumes of more than a few hundred
            slices, on CPU and GPU).
        prefetch: chunks read ahead in a background thread while the net computes.
    """

    def __init__(
        self,
        net: nn.Module,
        spatial_dims: int,
        size_multiple: int = 16,
        chunk: Sequence[int | None] | None = None,
        halo: str | int | Sequence[int] = "auto",
        batch_size: int | None = None,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        channels_last: bool = False,
        fuse_batch_norm: bool = True,
        compile: bool = False,
        prefetch: int = 2,
    ) -> None:
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {precision!r}")
        if chunk is not None and len(chunk) != 3:
            raise ValueError(f"chunk must be (z, y, x), got {list(chunk)}")
        self.device = torch.device(device)
        if batch_size is None:
            batch_size = 2 if self.device.type == "cpu" else 8
        if batch_size < 1 or prefetch < 0:
            raise ValueError(f"batch_size must be >= 1 and prefetch >= 0, got {batch_size}, {prefetch}")
        if fuse_batch_norm:
            net, folded = fold_batch_norm(net)
            log.debug("folded %d batch norms into their convolutions", folded)
        self.net = net.to(self.device).eval()
        self.spatial_dims, self.size_multiple = spatial_dims, int(size_multiple)
        self.chunk, self.halo = chunk, halo
        self.batch_size, self.prefetch = int(batch_size), int(prefetch)
        self.precision, self.channels_last = precision, bool(channels_last)
        self._exact_halo: tuple[int, ...] | None = None
        self._forward_net: Callable[[torch.Tensor], torch.Tensor] = self.net
        if self.channels_last:
            fmt = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
            self.net = self.net.to(memory_format=fmt)
            self._forward_net = self.net
        if compile:
            self._forward_net = torch.compile(self.net)

    @property
    def net_axes(self) -> tuple[int, ...]:
        """Axes of (z, y, x) the net convolves along."""
        return (1, 2) if self.spatial_dims == 2 else (0, 1, 2)

    def _halo_per_axis(self, counts: Sequence[int]) -> tuple[int, int, int]:
        m, axes = self.size_multiple, self.net_axes
        if all(counts[a] == 1 for a in axes):  # one chunk spans every net axis: no context needed
            return (0, 0, 0)
        if self.halo == "auto":
            if self._exact_halo is None:
                self._exact_halo = exact_halo(self.net, self.spatial_dims, m)
                log.info("receptive-field halo %s", self._exact_halo)
            per = self._exact_halo
        elif isinstance(self.halo, int | np.integer):
            per = (int(self.halo),) * len(axes)
        else:
            per = tuple(int(h) for h in self.halo)
            if len(per) != len(axes):
                raise ValueError(f"halo needs one value per net axis ({len(axes)}), got {list(self.halo)}")
        if any(h < 0 for h in per):
            raise ValueError(f"halo must be >= 0, got {list(per)}")
        out = [0, 0, 0]
        for a, h in zip(axes, per, strict=True):
            out[a] = 0 if counts[a] == 1 else _ceil_to(h, m)
        return tuple(out)

    def grid(self, shape: Sequence[int]) -> ChunkGrid:
        """The chunk grid of a (z, y, x) volume (a 2D image is (1, y, x))."""
        shape = tuple(int(s) for s in shape)
        if len(shape) == 2:
            shape = (1, *shape)
        m = self.size_multiple
        padded = tuple(_ceil_to(s, m) if a in self.net_axes else s for a, s in enumerate(shape))
        default = DEFAULT_CHUNK_2D if self.spatial_dims == 2 else DEFAULT_CHUNK_3D
        chunk = []
        for a, (s, p) in enumerate(zip(shape, padded, strict=True)):
            c = default[a] if self.chunk is None or self.chunk[a] is None else int(self.chunk[a])
            if c < 1:
                raise ValueError(f"chunk sides must be >= 1, got {list(self.chunk)}")
            chunk.append(min(_ceil_to(c, m), p) if a in self.net_axes else min(c, s))
        counts = [-(-s // c) for s, c in zip(shape, chunk, strict=True)]
        return ChunkGrid(shape, padded, tuple(chunk), self._halo_per_axis(counts))

    def read_tile(self, source: VolumeSource, grid: ChunkGrid, index: int,
                  value_range: tuple[float, float]) -> torch.Tensor:
        """The normalised float32 net input of chunk ``index``: (z, y, x) of the tile."""
        bounds = grid.tile(index)
        if source.ndim == 2:
            tile = read_padded(source, bounds[1:], source.shape)[None]
        else:
            tile = read_padded(source, bounds, source.shape)
        lo, hi = value_range
        x = np.asarray(tile, dtype=np.float32) - np.float32(lo)
        x *= np.float32(1.0 / (hi - lo))
        t = torch.from_numpy(x)
        return t.pin_memory() if self.device.type == "cuda" else t

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
        dtype = PRECISIONS[self.precision]
        amp = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.inference_mode(), amp:
            return self._forward_net(x)

    def predict_tile(self, tile: torch.Tensor, grid: ChunkGrid, index: int,
                     probabilities: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (uint8, core shape) and probabilities ((C, *core) float32 or None) of a chunk."""
        core = grid.core(index)
        crop = tuple(slice(sl.start - b[0], sl.stop - b[0]) for sl, b in zip(core, grid.tile(index), strict=True))
        labels, probs = [], []
        if self.spatial_dims == 2:
            batches = [tile[crop[0]][s:s + self.batch_size, None] for s in range(0, crop[0].stop - crop[0].start, self.batch_size)]
            inner = (slice(None), slice(None), *crop[1:])
        else:
            batches = [tile[None, None]]
            inner = (slice(None), slice(None), *crop)
        for x in batches:
            logits = self._logits(x)[inner].float()
            labels.append(logits.argmax(1).to(torch.uint8).cpu())
            if probabilities:
                probs.append(torch.softmax(logits, 1).cpu())
        lab = torch.cat(labels).numpy()  # (z, y, x) (2D: slices are the batch) or (1, z, y, x)
        if self.spatial_dims == 3:
            lab = lab[0]
        if not probabilities:
            return lab, None
        p = torch.cat(probs).numpy()
        return lab, (p.transpose(1, 0, 2, 3) if self.spatial_dims == 2 else p[0])

    def predict(self, image: np.ndarray, on_probabilities: Callable[[slice, np.ndarray], None] | None = None,
                progress: bool = True) -> np.ndarray:
        """Labels (uint8, shape of ``image``) of a normalised 2D (y, x) or 3D (z, y, x) image
        in memory: the same chunks, halos and numbers as the out-of-core path.

        ``on_probabilities(slice(None), probs)`` receives the (C, ...) probabilities once.
        """
        from src.inference.volume_prediction import predict_volume

        if image.ndim not in (2, 3) or image.ndim < self.spatial_dims:
            raise ValueError(f"cannot predict a {image.ndim}D image of shape {image.shape} with a {self.spatial_dims}D net")
        result = predict_volume(self, np.asarray(image), value_range=(0.0, 1.0),
                                save_probabilities=on_probabilities is not None, progress=progress)
        if on_probabilities is not None:
            on_probabilities(slice(None), result.probabilities)
        return result.labels

