"""Tiled fully-convolutional prediction: chunks on a fixed grid, each predicted with a halo.

A volume (z, y, x) is reflect-padded (virtually: only the region read is padded) to a multiple
of the net's size multiple along the net's axes, and cut into chunks on a grid that depends
only on the volume's shape. Each chunk is predicted from the chunk plus a halo (clipped to the
padded volume) and its core is kept. With ``halo="auto"`` the halo covers the net's receptive
field, so every chunk equals the net applied to the whole padded volume at once (exact).
2D nets predict whole slices (their chunks span y and x unless the slice is larger than the
chunk), a batch of slices per forward pass.

With ``max_memory`` (bytes, ``"2GB"``, ``"auto"``) a :class:`TilingPlan` bounds the peak: the
activation memory of the net is measured once (one forward of a probe slice, bytes per input
pixel), and the slice batch, and for chunk tiles too large for one pass a 2D tiling of each tile
with exact halos (the receptive radius, tile origins on the net's size multiple), are chosen so
that the process's base memory, the pipeline's buffers and the activations fit. The labels are
the same as without tiling.
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
from src.inference.memory import format_bytes, peak_extra_memory, resolve_max_memory, rss_anon
from src.inference.receptive_field import exact_halo

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: default chunk: 2D nets, slices x in-plane side (capped); 3D nets, a cube
DEFAULT_CHUNK_2D = (16, 1024, 1024)
DEFAULT_CHUNK_3D = (128, 128, 128)
#: the measured activation memory is scaled by this (other shapes may pick other kernels)
ACTIVATION_SAFETY = 1.15
#: side of the square probe slice whose forward pass measures the activation memory
PROBE_SIDE = 512
#: raw bytes read (and normalised) at a time into a chunk's float32 tile
READ_SLAB_BYTES = 8 << 20


def _ceil_to(n: int, m: int) -> int:
    return -(-n // m) * m


@dataclass(frozen=True)
class ChunkGrid:
    """Chunks of a (z, y, x) volume.

    ``padded`` is the shape after padding the net's axes to a multiple; ``halo`` is the context read
    around each chunk (0 along z for 2D nets).
    """

    shape: tuple[int, int, int]
    padded: tuple[int, int, int]
    chunk: tuple[int, int, int]
    halo: tuple[int, int, int]

    @property
    def counts(self) -> tuple[int, ...]:
        """Number of chunks along each axis."""
        return tuple(-(-s // c) for s, c in zip(self.shape, self.chunk, strict=True))

    def __len__(self) -> int:
        return int(np.prod(self.counts))

    def core(self, index: int) -> tuple[slice, ...]:
        """The chunk's region of the (unpadded) volume."""
        pos = np.unravel_index(index, self.counts)
        return tuple(slice(int(p) * c, min((int(p) + 1) * c, s)) for p, c, s in zip(pos, self.chunk, self.shape, strict=True))

    def tile(self, index: int) -> tuple[tuple[int, int], ...]:
        """(start, stop) per axis of the net input in padded coordinates.

        The core (extended to the padded end on the last chunk) plus the halo, clipped to the padded
        volume.
        """
        bounds = []
        for sl, s, p, h in zip(self.core(index), self.shape, self.padded, self.halo, strict=True):
            stop = p if sl.stop == s else sl.stop
            bounds.append((max(0, sl.start - h), min(p, stop + h)))
        return tuple(bounds)

    def voxels(self, index: int) -> int:
        """Number of voxels in the chunk's core region."""
        return int(np.prod([sl.stop - sl.start for sl in self.core(index)]))


@dataclass(frozen=True)
class TilingPlan:
    """How a chunk's tile is fed to a 2D net.

    ``batch`` slices per forward pass, each slice of the tile cut in ``tiles`` (y, x) pieces of
    ``core`` px (padded coordinates; the last piece may be shorter) read with ``halo`` px of context
    per side (clipped to the tile). ``tiles == (1, 1)`` is the whole tile at once.
    ``est_peak``/``limit`` are bytes (None without ``max_memory``); ``model`` says how the estimate
    was made.
    """

    batch: int
    tiles: tuple[int, int] = (1, 1)
    core: tuple[int, int] | None = None
    halo: tuple[int, int] = (0, 0)
    est_peak: int | None = None
    limit: int | None = None
    model: str = ""

    def describe(self) -> str:
        """One-line description of the plan (batch, tiling, estimated peak) for the log."""
        tiles = (f"tiles {self.tiles[0]}x{self.tiles[1]} of {self.core[0]}x{self.core[1]} px with halo "
                 f"{self.halo[0]}x{self.halo[1]} px" if self.tiles != (1, 1) else "whole tiles (no 2D tiling)")
        text = f"batch {self.batch} slices, {tiles}"
        if self.limit is not None:
            text += f", est. peak {format_bytes(self.est_peak)} for max_memory {format_bytes(self.limit)}"
        return text + (f" ({self.model})" if self.model else "")


def _pieces(start: int, stop: int, size: int) -> list[tuple[int, int]]:
    return [(a, min(a + size, stop)) for a in range(start, stop, size)]


def read_padded(source: VolumeSource, bounds: Sequence[tuple[int, int]], shape: Sequence[int]) -> np.ndarray:
    """The region ``bounds`` of the volume reflect-padded at its far ends (numpy's ``reflect``).

    Reads only what that region needs.
    """
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
        max_memory: bound on the peak memory of the run (bytes, ``"2GB"``, ``"1.5GiB"``, or
            ``"auto"``: what the process holds plus 70 % of the memory available); ``None``:
            unbounded. 2D nets: sets the slices per forward pass (at most ``batch_size``) and,
            when one slice of a chunk's tile does not fit, cuts it into 2D tiles with exact
            halos (same labels). The bound covers the process's anonymous memory on the CPU
            (its base, the pipeline's buffers, the activations), the activations on a GPU.
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
        max_memory: str | int | None = None,
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
        self.max_memory = max_memory
        if max_memory is not None and not (isinstance(max_memory, str) and max_memory.strip().lower() == "auto"):
            resolve_max_memory(max_memory)  # a bad size fails here, not after the net is loaded
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
        self._bytes_per_pixel: dict[bool, float] = {}  # measured activation memory (probabilities or not)
        self._plans: dict[tuple, TilingPlan] = {}
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
        per = self._net_halo()
        out = [0, 0, 0]
        for a, h in zip(axes, per, strict=True):
            out[a] = 0 if counts[a] == 1 else _ceil_to(h, m)
        return tuple(out)

    def _net_halo(self) -> tuple[int, ...]:
        """Context per side along each net axis: the receptive radius (``auto``) or the given halo."""
        axes = self.net_axes
        if self.halo == "auto":
            if self._exact_halo is None:
                self._exact_halo = exact_halo(self.net, self.spatial_dims, self.size_multiple)
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
        return tuple(per)

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
        """The normalised float32 net input of chunk ``index``: (z, y, x) of the tile.

        Read and normalised a slab of slices at a time (about :data:`READ_SLAB_BYTES` of raw
        data) into the one float32 tile, so the only other memory it takes is one raw slab.
        """
        bounds = grid.tile(index)
        lo, hi = value_range
        scale = np.float32(1.0 / (hi - lo))
        if source.ndim == 2 or bounds[0][1] > source.shape[0]:  # a 2D image, or padded along z: at once
            tile = read_padded(source, bounds[1:], source.shape)[None] if source.ndim == 2 else \
                read_padded(source, bounds, source.shape)
            x = np.asarray(tile, dtype=np.float32) - np.float32(lo)
            x *= scale
        else:
            (z0, z1), plane = bounds[0], bounds[1:]
            x = np.empty((z1 - z0, *(b - a for a, b in plane)), np.float32)
            step = max(1, READ_SLAB_BYTES // max(1, x[0].size * source.dtype.itemsize))
            for z in range(z0, z1, step):
                part = x[z - z0:min(z + step, z1) - z0]
                part[...] = read_padded(source, ((z, min(z + step, z1)), *plane), source.shape)
                part -= np.float32(lo)
                part *= scale
        t = torch.from_numpy(x)
        return t.pin_memory() if self.device.type == "cuda" else t

    def _logits(self, x: torch.Tensor, net: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last if x.ndim == 4 else torch.channels_last_3d)
        dtype = PRECISIONS[self.precision]
        amp = torch.autocast(self.device.type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
        with torch.inference_mode(), amp:
            return (net or self._forward_net)(x)

    def _forward_batch(self, x: torch.Tensor, inner: tuple[slice, ...], probabilities: bool,
                       net: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Labels (uint8) and probabilities (float32 or None) of the ``inner`` region of a batch, on the CPU."""
        logits = self._logits(x, net)[inner].float()
        labels = logits.argmax(1).to(torch.uint8).cpu()
        return labels, (torch.softmax(logits, 1).cpu() if probabilities else None)

    # ------------------------------------------------------------------------------- memory plan

    def tile_shape(self, grid: ChunkGrid) -> tuple[int, int, int]:
        """The largest net input (tile) of a chunk of ``grid``: chunk plus halos, clipped."""
        return tuple(min(p, c + 2 * h + (self.size_multiple if h else 0))
                     for p, c, h in zip(grid.padded, grid.chunk, grid.halo, strict=True))

    def pipeline_bytes(self, grid: ChunkGrid, itemsize: int = 4, n_classes: int = 0) -> int:
        """Host buffers (bytes) of the read-ahead/compute/write pipeline at its fullest.

        ``prefetch`` + 1 float32 tiles, the raw and padded copies of the slab being read
        (``itemsize`` bytes a voxel; the whole tile where it is read at once), and labels (plus
        ``n_classes`` float32 probabilities) of 4 chunks being assembled, queued, written and
        encoded.
        """
        tz, ty, tx = self.tile_shape(grid)
        raw = min(tz * ty * tx, max(ty * tx, READ_SLAB_BYTES // max(1, int(itemsize))) if tz > 1 else ty * tx)
        return (self.prefetch + 1) * 4 * tz * ty * tx + 2 * int(itemsize) * raw + 4 * int(np.prod(grid.chunk)) * (1 + 4 * n_classes)

    def activation_bytes_per_pixel(self, probabilities: bool = False, side: tuple[int, int] | None = None) -> tuple[float, int]:
        """Measured activation memory of one 2D forward pass: (bytes per input pixel, classes).

        Returns the number of classes as the second item. Includes the argmax, and softmax when
        ``probabilities``; measured from one slice of :data:`PROBE_SIDE`² (or ``side``, if smaller)
        after a small warm-up.
        """
        if probabilities not in self._bytes_per_pixel:
            m = self.size_multiple
            py, px = (min(PROBE_SIDE, _ceil_to(s, m)) for s in (side or (PROBE_SIDE, PROBE_SIDE)))
            inner = (slice(None),) * 4
            warm = torch.rand((1, 1, _ceil_to(min(py, 64), m), _ceil_to(min(px, 64), m)),
                              generator=torch.Generator().manual_seed(0))
            labels, _ = self._forward_batch(warm, inner, probabilities, self.net)
            x = torch.rand((1, 1, py, px), generator=torch.Generator().manual_seed(0))
            n_classes = [0]

            def forward() -> None:
                out = self._logits(x, self.net)
                n_classes[0] = int(out.shape[1])
                out = out.float()
                lab = out.argmax(1).to(torch.uint8).cpu()
                if probabilities:
                    torch.softmax(out, 1).cpu()
                del out, lab

            extra = peak_extra_memory(forward, self.device)
            self._bytes_per_pixel[probabilities] = (max(8.0, extra / (py * px)), n_classes[0])
            log.debug("activation memory %.0f B/pixel (one %dx%d forward)", extra / (py * px), py, px)
        return self._bytes_per_pixel[probabilities]

    def plan(self, grid: ChunkGrid, itemsize: int = 4, probabilities: bool = False) -> TilingPlan:
        """The :class:`TilingPlan` of ``grid`` (cached).

        Without ``max_memory`` ``batch_size`` slices of whole tiles; with it the largest batch (up
        to ``batch_size``) whose estimated peak fits, else one slice at a time cut into the fewest
        pixels of 2D tiles that fit.

        Estimate: the process's anonymous RSS now (CPU; the net, libraries) + the pipeline's
        buffers (``prefetch`` + 1 float32 tiles, the raw slab being read, labels and
        probabilities of up to 4 chunks in flight) + the measured activation bytes per pixel
        (:meth:`activation_bytes_per_pixel`) × :data:`ACTIVATION_SAFETY` × pixels per pass.
        """
        key = (grid, int(itemsize), bool(probabilities))
        if key in self._plans:
            return self._plans[key]
        limit = resolve_max_memory(self.max_memory)
        if limit is None or self.spatial_dims == 3:
            plan = TilingPlan(self.batch_size if self.spatial_dims == 2 else 1, limit=None,
                              model="no max_memory" if limit is None else "max_memory is not applied to 3D nets; "
                              "their chunk sets the memory")
            self._plans[key] = plan
            return plan
        from src.inference.volume_prediction import return_freed_memory

        return_freed_memory()  # freed tiles and activations go back to the system: RSS follows the live set
        tz, ty, tx = self.tile_shape(grid)
        bpp, n_classes = self.activation_bytes_per_pixel(probabilities, (ty, tx))
        cost = bpp * ACTIVATION_SAFETY
        buffers = self.pipeline_bytes(grid, itemsize, n_classes if probabilities else 0)
        cpu = self.device.type == "cpu"
        base = rss_anon() if cpu else 0
        budget = limit - base - (buffers if cpu else 0)
        where = (f"activations measured {bpp:.0f} B/pixel x {ACTIVATION_SAFETY}; base {format_bytes(base)} + buffers "
                 f"{format_bytes(buffers)}" if cpu else f"GPU activations measured {bpp:.0f} B/pixel x {ACTIVATION_SAFETY}")
        plan = None
        for batch in range(min(self.batch_size, tz), 0, -1):
            if batch * ty * tx * cost <= budget:
                plan = TilingPlan(batch, est_peak=int(limit - budget + batch * ty * tx * cost), limit=limit, model=where)
                break
        if plan is None:
            m = self.size_multiple
            halo = tuple(_ceil_to(h, m) for h in self._net_halo())
            cy, cx = min(grid.chunk[1], ty), min(grid.chunk[2], tx)
            best, smallest = None, None
            def widest(c: int, t: int, s: int, h: int, spans: bool) -> int:
                """The widest input of pieces of ``s`` px of a ``c`` px core in a ``t`` px tile.

                Two of them at the edges of a slice the chunk spans have context on one side.
                """
                n = -(-c // s)
                return t if n == 1 else min(t, s + (h if spans and n == 2 else 2 * h))

            for ny in range(1, min(64, -(-cy // m)) + 1):
                sy = _ceil_to(-(-cy // ny), m)
                iy = widest(cy, ty, sy, halo[0], grid.halo[1] == 0)
                for nx in range(1, min(64, -(-cx // m)) + 1):
                    sx = _ceil_to(-(-cx // nx), m)
                    ix = widest(cx, tx, sx, halo[1], grid.halo[2] == 0)
                    n = -(-cy // sy) * -(-cx // sx)
                    est = iy * ix * cost
                    cand = (n * iy * ix, n, (sy, sx), (-(-cy // sy), -(-cx // sx)), est)
                    if est <= budget and (best is None or cand[:2] < best[:2]):
                        best = cand
                    if min(sy, sx) >= max(m, *halo) and (smallest is None or est < smallest[4]):
                        smallest = cand
            if best is None:
                best = smallest or cand
                log.warning("max_memory %s is too small for this net and chunk (budget for activations %s); "
                            "predicting with the smallest tiles; lower tiling.chunk or tiling.prefetch",
                            format_bytes(limit), format_bytes(max(budget, 0)))
            plan = TilingPlan(1, best[3], best[2], halo, int(limit - budget + best[4]), limit, where)
        self._plans[key] = plan
        return plan

    def predict_tile(self, tile: torch.Tensor, grid: ChunkGrid, index: int,
                     probabilities: bool, plan: TilingPlan | None = None) -> tuple[np.ndarray, np.ndarray | None]:
        """Labels (uint8, core shape) and probabilities ((C, *core) float32 or None) of a chunk."""
        core = grid.core(index)
        crop = tuple(slice(sl.start - b[0], sl.stop - b[0]) for sl, b in zip(core, grid.tile(index), strict=True))
        if self.spatial_dims == 3:
            lab, p = self._forward_batch(tile[None, None], (slice(None), slice(None), *crop), probabilities)
            return lab.numpy()[0], (p.numpy()[0] if p is not None else None)
        plan = plan or self.plan(grid, probabilities=probabilities)
        slices = tile[crop[0]]
        nz, (cy, cx) = slices.shape[0], (crop[1].stop - crop[1].start, crop[2].stop - crop[2].start)
        if plan.tiles == (1, 1):
            labels, probs = [], []
            for s in range(0, nz, plan.batch):
                lab, p = self._forward_batch(slices[s:s + plan.batch, None], (slice(None), slice(None), *crop[1:]),
                                             probabilities)
                labels.append(lab)
                probs.append(p)
            lab = torch.cat(labels).numpy()
            return lab, (torch.cat(probs).numpy().transpose(1, 0, 2, 3) if probabilities else None)
        m, (hy, hx) = self.size_multiple, plan.halo
        ty, tx = slices.shape[1:]
        out = torch.empty((nz, cy, cx), dtype=torch.uint8)
        out_p: torch.Tensor | None = None
        for s in range(0, nz, plan.batch):
            for a, b in _pieces(crop[1].start, crop[1].stop, plan.core[0]):
                y0, y1 = max(0, a - hy), min(ty, _ceil_to(b, m) + hy)
                for c, d in _pieces(crop[2].start, crop[2].stop, plan.core[1]):
                    x0, x1 = max(0, c - hx), min(tx, _ceil_to(d, m) + hx)
                    x = slices[s:s + plan.batch, None, y0:y1, x0:x1]
                    lab, p = self._forward_batch(x, (slice(None), slice(None), slice(a - y0, b - y0),
                                                     slice(c - x0, d - x0)), probabilities)
                    dst = (slice(s, s + plan.batch), slice(a - crop[1].start, b - crop[1].start),
                           slice(c - crop[2].start, d - crop[2].start))
                    out[dst] = lab
                    if p is not None:
                        if out_p is None:
                            out_p = torch.empty((nz, p.shape[1], cy, cx), dtype=torch.float32)
                        out_p[dst[0], :, dst[1], dst[2]] = p
        return out.numpy(), (out_p.numpy().transpose(1, 0, 2, 3) if out_p is not None else None)

    def predict(self, image: np.ndarray, on_probabilities: Callable[[slice, np.ndarray], None] | None = None,
                progress: bool = True) -> np.ndarray:
        """Labels (uint8, shape of ``image``) of a normalised in-memory 2D or 3D image.

        The image is 2D (y, x) or 3D (z, y, x). Uses the same chunks, halos and numbers as the
        out-of-core path.

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

