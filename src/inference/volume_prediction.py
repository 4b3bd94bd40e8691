"""Predict a whole volume chunk by chunk: lazy input, incremental output, resumable, sharded.

Each chunk is read (in a background thread, ahead of the net), predicted and written to the
output (in another thread); a done-marker per chunk is written after its data, so a killed run
restarts at the first unfinished chunk. Chunks are dealt round-robin to ``world_size``
processes (the ranks of a DDP job or of separate launches); every rank writes its own chunks
into the one shared output, and the rank that writes the last marker finishes the output.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from tqdm.auto import tqdm

from src.data.io import write_json
from src.data.io.volumes import (
    MemoryOutput,
    VolumeOutput,
    VolumeSource,
    create_output,
    open_output,
    open_volume,
    output_exists,
    output_kind,
    remove_partial_output,
)

if TYPE_CHECKING:  # for annotations only: tiled.py calls predict_volume
    from src.inference.tiled import TiledPredictor

log = logging.getLogger(__name__)

#: seconds a rank waits for another rank to create the shared output
CREATE_TIMEOUT_S = 600.0


@dataclass
class PredictionResult:
    """What a (part of a) run did. ``labels``/``probabilities`` are arrays only in memory."""

    n_chunks: int
    computed: list[int]
    skipped: int
    seconds: float
    voxels: int
    finished: bool
    labels: Any = None
    probabilities: Any = None
    manifest: dict = field(default_factory=dict)
    uncertainty: Any = None

    @property
    def voxels_per_s(self) -> float:
        """Throughput in voxels per second (NaN when ``seconds`` is not positive)."""
        return self.voxels / self.seconds if self.seconds > 0 else float("nan")


def _libc():
    import ctypes
    import ctypes.util

    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None


def return_freed_memory(threshold: int = 1 << 20) -> bool:
    """Serve allocations above ``threshold`` bytes by fresh ``mmap`` on glibc.

    Freed ones (tiles, activations) then go back to the system at once instead of piling up in
    the per-thread heaps of the reader, writer and compute threads (keeps a long run's RSS
    flat). False where this is not glibc.
    """
    libc = _libc()
    try:
        return bool(libc is not None and libc.mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except AttributeError:
        return False


def trim_freed_memory() -> bool:
    """Give the free pages inside every glibc heap back to the system (``malloc_trim(0)``).

    Called after each chunk: the small allocations (below the mmap threshold) of the reader,
    writer, compressor and compute threads are spread over several heaps, whose free holes
    otherwise stay resident and add up over a long run. False where this is not glibc.
    """
    libc = _libc()
    try:
        return bool(libc is not None and libc.malloc_trim(0) >= 0)
    except AttributeError:
        return False


def progress_dir(output: Path) -> Path:
    """Manifest and per-chunk done-markers of an unfinished output (removed when complete)."""
    return output.with_name(output.name + ".progress")


def resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Resolve this process's ``(rank, world_size)``.

    Given ones, else torch.distributed's when initialised, else the ``RANK``/``WORLD_SIZE``
    environment (torchrun, SLURM wrappers), else (0, 1).
    """
    import torch.distributed as dist

    if rank is None or world_size is None:
        if dist.is_available() and dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        else:
            rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0))) if rank is None else rank
            world_size = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1))) if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size), got rank={rank}, world_size={world_size}")
    return int(rank), int(world_size)


def _marker(progress: Path, index: int) -> Path:
    return progress / "done" / f"{index:08d}"


def _done(progress: Path) -> set[int]:
    folder = progress / "done"
    return {int(p.name) for p in folder.iterdir() if p.name.isdigit()} if folder.is_dir() else set()


def _try_lock(path: Path) -> bool:
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return True
    except FileExistsError:
        return False


def _open_shared_output(output: Path, manifest: dict, n_classes: int, overwrite: bool) -> VolumeOutput:
    """Create the output (one rank) or open it (resume, other ranks), checking the manifest."""
    progress = progress_dir(output)
    manifest_path = progress / "manifest.json"
    if not manifest_path.exists():
        if not progress.exists() and output_exists(output) and not overwrite:
            raise FileExistsError(f"output {output} exists (a finished prediction); pass overwrite=true to replace it")
        (progress / "done").mkdir(parents=True, exist_ok=True)
        lock = progress / "create.lock"
        if _try_lock(lock):
            try:
                remove_partial_output(output)  # a finished output stays until the new one is complete
                out = create_output(output, tuple(manifest["shape"]), tuple(manifest["chunk"]), n_classes,
                                    {"class_names": manifest["class_names"], "source": manifest["input"]})
                write_json(manifest_path, manifest)
                return out
            except BaseException:
                shutil.rmtree(progress, ignore_errors=True)
                raise
        start = time.monotonic()
        while not manifest_path.exists():  # another rank is creating it
            if not lock.exists() or time.monotonic() - start > CREATE_TIMEOUT_S:
                raise RuntimeError(f"output {output}: the rank creating it failed or timed out; see its log")
            time.sleep(0.2)
    stored = json.loads(manifest_path.read_text())
    differ = {k: (stored.get(k), v) for k, v in manifest.items() if stored.get(k) != v}
    if differ:
        if overwrite:
            raise FileExistsError(f"output {output} is an unfinished prediction with other settings {differ}; "
                                  f"delete {output} and {progress} to start again")
        raise ValueError(f"cannot resume {output}: settings differ from the unfinished run (stored, now): {differ}; "
                         f"pass the same settings, or delete {output} and {progress}")
    return open_output(output)


def uncertainty_path(output: str | os.PathLike) -> Path:
    """Where the uncertainty of ``output`` goes: ``<stem>_uncertainty`` with its suffix."""
    output = Path(output)
    return output.with_name(f"{output.stem}_uncertainty{output.suffix}")


def _uncertainty_output(output: Path, manifest: dict, overwrite: bool, rank: int = 0) -> VolumeOutput:
    """Create or reopen the uint8 uncertainty volume beside ``output``.

    Created on a fresh run (rank 0); reopened on resume (the main output's manifest exists) and
    on other ranks (once rank 0 made it).
    """
    path = uncertainty_path(output)
    resuming = (progress_dir(output) / "manifest.json").exists()
    if rank != 0 and not resuming:
        start = time.monotonic()
        while not output_exists(path):
            if time.monotonic() - start > CREATE_TIMEOUT_S:
                raise RuntimeError(f"uncertainty output {path}: rank 0 did not create it; see its log")
            time.sleep(0.2)
        time.sleep(0.5)
        return open_output(path)
    if resuming and output_exists(path):
        return open_output(path)
    if output_exists(path) and not overwrite and not resuming:
        raise FileExistsError(f"uncertainty output {path} exists; pass overwrite=true to replace it")
    remove_partial_output(path)
    return create_output(path, tuple(manifest["shape"]), tuple(manifest["chunk"]), 0,
                         {"uncertainty": "predictive entropy, uint8 = round(255 * H / log C)",
                          "class_names": manifest["class_names"], "source": manifest["input"]})


def predict_volume(
    predictor: TiledPredictor,
    source: VolumeSource | np.ndarray | str | os.PathLike,
    output: str | os.PathLike | None = None,
    *,
    value_range: tuple[float, float],
    save_probabilities: bool = False,
    class_names: list[str] | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    settings: dict | None = None,
    max_chunks: int | None = None,
    save_uncertainty: bool = False,
) -> PredictionResult:
    """Predict ``source`` into ``output`` (``.zarr`` or ``.tif``; ``None`` = in memory).

    ``value_range`` (lo, hi) maps grey values to (x - lo) / (hi - lo). With an output path a
    run resumes an unfinished one with the same settings (``settings`` are extra entries that
    must match, e.g. the checkpoint), skipping chunks already done; ``max_chunks`` stops this
    rank after that many chunks (for tests and time-limited jobs). With ``save_uncertainty``
    the predictive entropy of every chunk's probabilities is written beside the labels, chunk by
    chunk like them, to :func:`uncertainty_path` (``<stem>_uncertainty.zarr|.tif``) as uint8:
    ``round(255 · H / log C)`` (0 = certain, 255 = uniform over the C classes); in memory it is
    ``result.uncertainty`` (float32, nats). Returns what was done.
    """
    src = source if isinstance(source, VolumeSource) else open_volume(source)
    if src.ndim < predictor.spatial_dims:
        raise ValueError(f"{src.name}: a {src.ndim}D image of shape {src.shape} cannot be predicted with a "
                         f"{predictor.spatial_dims}D net")
    grid = predictor.grid(src.shape)
    lo, hi = (float(v) for v in value_range)
    if not hi > lo:
        raise ValueError(f"value_range must have hi > lo, got {value_range}")
    n_classes = int(getattr(predictor.net, "num_classes", 0) or 0) or len(class_names or []) or None
    rank, world_size = resolve_rank(rank, world_size) if output is not None else (0, 1)
    out_shape = src.shape
    chunk_out = grid.chunk if src.ndim == 3 else grid.chunk[1:]
    manifest = {
        "input": src.name, "shape": list(out_shape), "dtype": str(src.dtype), "chunk": list(chunk_out),
        "halo": list(grid.halo), "value_range": [lo, hi], "save_probabilities": bool(save_probabilities),
        **({"save_uncertainty": True} if save_uncertainty else {}),
        "class_names": list(class_names or []), **(settings or {}),
    }
    progress_path = None
    unc_out: VolumeOutput | None = None
    unc_memory: np.ndarray | None = np.zeros(src.shape, np.float32) if save_uncertainty and output is None else None
    if output is None:
        out: VolumeOutput | None = None
        done: set[int] = set()
    else:
        output = Path(output)
        output_kind(output)
        if save_probabilities and not n_classes:
            raise ValueError("save_probabilities needs the number of classes (class_names or net.num_classes)")
        if save_uncertainty and not n_classes:
            raise ValueError("save_uncertainty needs the number of classes (class_names or net.num_classes)")
        unc_out = _uncertainty_output(output, manifest, overwrite, rank) if save_uncertainty else None
        out = _open_shared_output(output, manifest, n_classes if save_probabilities else 0, overwrite)
        progress_path = progress_dir(output)
        done = _done(progress_path)
    mine = [i for i in range(len(grid)) if i % world_size == rank]
    todo = [i for i in mine if i not in done]
    if max_chunks is not None:
        todo = todo[:max_chunks]
    skipped = sum(i in done for i in mine)
    if skipped:
        log.info("resuming %s: %d of this rank's %d chunks already done", output, skipped, len(mine))

    def write(index: int, labels: np.ndarray, probs: np.ndarray | None) -> None:
        region = grid.core(index) if src.ndim == 3 else grid.core(index)[1:]
        if src.ndim == 2:
            labels, probs = labels[0], None if probs is None else probs[:, 0]
        if save_uncertainty:
            from src.analysis.uncertainty import predictive_entropy

            entropy = predictive_entropy(probs)
            if unc_memory is not None:
                unc_memory[region] = entropy
            if unc_out is not None:
                unc_out.write(region, np.round(255 * np.clip(entropy / np.log(probs.shape[0]), 0, 1)).astype(np.uint8), None)
            probs = probs if save_probabilities else None
        nonlocal out
        if out is None:
            out = MemoryOutput(src.shape, probs.shape[0] if probs is not None else 0, probs is not None)
        out.write(region, labels, probs)
        if progress_path is not None:
            _marker(progress_path, index).touch()

    want_probs = save_probabilities or save_uncertainty
    plan = predictor.plan(grid, src.dtype.itemsize, want_probs) if todo else None
    if plan is not None:
        log.info("tiling: %s", plan.describe())
    start = time.perf_counter()
    voxels = sum(grid.voxels(i) for i in todo)
    bar = tqdm(total=voxels, unit="vox", unit_scale=True, desc=f"predict {Path(src.name).name}"
               + (f" [rank {rank}/{world_size}]" if world_size > 1 else ""), disable=not progress, smoothing=0.1)
    with ThreadPoolExecutor(1, thread_name_prefix="read") as reader, ThreadPoolExecutor(1, thread_name_prefix="write") as writer:
        reads: deque[tuple[int, Future]] = deque()
        writes: deque[Future] = deque()
        queue = iter(todo)

        def refill() -> None:
            while len(reads) < max(1, predictor.prefetch):
                index = next(queue, None)
                if index is None:
                    return
                reads.append((index, reader.submit(predictor.read_tile, src, grid, index, (lo, hi))))

        refill()
        while reads:
            index, future = reads.popleft()
            tile = future.result()
            refill()
            labels, probs = predictor.predict_tile(tile, grid, index, want_probs, plan)
            del tile
            writes.append(writer.submit(write, index, labels, probs))
            while len(writes) > 1 or (writes and writes[0].done()):  # one chunk written while the next computes
                writes.popleft().result()
            trim_freed_memory()
            bar.update(grid.voxels(index))
        for f in writes:
            f.result()
    bar.close()
    seconds = time.perf_counter() - start
    finished = True
    if progress_path is not None and out is not None:
        finished = len(_done(progress_path)) == len(grid)
        if finished and _try_lock(progress_path / "finalize.lock"):
            if unc_out is not None:
                unc_out.finalize()
            out.finalize()
            shutil.rmtree(progress_path)
            log.info("prediction complete: %s", output)
    if src is not source:
        src.close()
    result = PredictionResult(len(grid), todo, skipped, seconds, voxels, finished, manifest=manifest)
    if output is None and out is not None:
        result.labels, result.probabilities = out.labels, out.probabilities
        result.uncertainty = unc_memory
    return result


def predict_file(
    ckpt_path: str | os.PathLike,
    input: str,
    output: str,
    make_predictor: Callable[..., TiledPredictor],
    *,
    device: str = "auto",
    normalize: Mapping[str, float] | None = None,
    save_probabilities: bool = False,
    save_uncertainty: bool = False,
    rank: int | None = None,
    world_size: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> PredictionResult:
    """Segment the volume file ``input`` into ``output`` with a checkpoint (``predict.py``'s work).

    The output path, the checkpoint and the input are checked before anything is read whole or
    written; the grey range is sampled from the input with the checkpoint's (or ``normalize``'s)
    percentiles; then :func:`predict_volume` runs this rank's chunks.

    Args:
        ckpt_path: a segmentation checkpoint.
        input: the volume (TIFF, Zarr, HDF5 ``file.h5:/key``, ...), read lazily.
        output: ``.zarr`` or ``.tif`` (written chunk by chunk, resumable).
        make_predictor: builds the tiled predictor from ``net``, ``spatial_dims``,
            ``size_multiple`` and ``device`` (the instantiated ``conf/tiling`` partial).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:1``, ... (``auto``: this rank's GPU if any).
        normalize: ``{lower, upper}`` percentiles; None = the checkpoint's.
        save_probabilities: also the float32 class probabilities (C, z, y, x).
        save_uncertainty: also the predictive entropy of the ensemble (see :func:`predict_volume`).
        rank: this rank (None: torch.distributed, RANK/WORLD_SIZE, else 0).
        world_size: the number of ranks (None: as ``rank``).
        overwrite: replace a finished output.
        progress: a progress bar.

    Returns:
        What this rank did (:class:`PredictionResult`).
    """
    from src.config import resolve_device
    from src.data.io.checks import check_output_file
    from src.data.io.volumes import sample_range, split_key
    from src.data.transforms import normalization
    from src.models.checkpoint import load_segmentation_checkpoint

    return_freed_memory()
    output_kind(output)
    input_path = str(split_key(input)[0])
    check_output_file(output, "output", inputs=[input_path])  # before the model or the volume is read
    source = open_volume(input)
    module, data_hparams = load_segmentation_checkpoint(ckpt_path)
    rank, world_size = resolve_rank(rank, world_size)
    predictor = make_predictor(net=module.net, spatial_dims=module.spatial_dims, size_multiple=module.size_multiple,
                               device=resolve_device(device, per_rank=True))
    norm = normalization(normalize, data_hparams.get("normalize"))
    with source:
        value_range = sample_range(source, norm["lower"], norm["upper"])
        log.info("predicting %s %s %s with %s (rank %d of %d), grey range %s", source.name, source.shape,
                 source.dtype, module.hparams.get("name", "model"), rank, world_size, value_range)
        ckpt = Path(ckpt_path).resolve()
        info = Path(input_path).stat()  # a resumed run refuses an input that changed (and its grey range)
        result = predict_volume(
            predictor, source, output, value_range=value_range, save_probabilities=save_probabilities,
            save_uncertainty=save_uncertainty, class_names=list(module.class_names), rank=rank, world_size=world_size, overwrite=overwrite,
            progress=progress, settings={"checkpoint": str(ckpt), "checkpoint_bytes": ckpt.stat().st_size,
                                         "input_bytes": info.st_size, "input_mtime_ns": info.st_mtime_ns},
        )
    log.info("rank %d: %d chunks predicted (%d already done) of %d, %.3g voxels/s%s", rank, len(result.computed),
             result.skipped, result.n_chunks, result.voxels_per_s, "; output complete" if result.finished else "")
    return result
