"""Whole-volume prediction speed and memory: our tiled path against MONAI's sliding window.

``speed``: for each model (untrained weights, throughput does not depend on them; batch-norm
statistics set from 4 slices so that the labels vary) and volume, in fresh processes side by side: our path (``predict_volume``: TIFF on disk → Zarr,
whole slices, the default batch (2 slices on CPU), channels-last, batch norm folded into the
convolutions; fp32 and bf16 autocast; ``--compile`` adds ``torch.compile``, compile time
included) and the peer, MONAI's
``SliceInferer`` (its sliding window over the slices of the whole in-memory volume) with its
defaults (sw_batch_size 1, overlap 0.25, constant blending) and the model's configured window
(roi 256). Prints voxels/s, peak RSS, ratios, label agreement with the peer, FLOPs per voxel
(``torch.utils.flop_counter``) and the achieved GFLOP/s (net FLOPs per output voxel × voxels/s).

``memory``: for each volume depth and slice side writes a uint16 TIFF (default 256, 1024 and
2048 slices of 1024², up to 4 GiB) and runs ``predict.py`` on it (output Zarr) with each model
(default: the default LRCS-Net, C = 32, and U-Net; ``pointwise``, a 1×1 convolution, measures
the pipeline alone at almost no FLOPs), polling the child's ``/proc/<pid>/status`` for the peak
``RssAnon`` (anonymous memory; the memory-mapped input's file pages are ``RssFile``); prints
peak memory and voxels/s against the volume size, and the ``tiling:`` choice of predict.py.

    python benchmarks/inference.py speed --shapes 256 32x512x512 --models lrcsnet unet
    python benchmarks/inference.py memory --slices 256 1024 2048 --models pointwise
    python benchmarks/inference.py memory --slices 64 --sides 2048 --models lrcsnet tiling.max_memory=2GB
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

NETS = {
    "lrcsnet": {"_target_": "src.models.nets.lrcsnet.LRCSNet", "num_classes": 3, "base_filters": 32},
    "unet": {"_target_": "src.models.nets.unet.UNet", "spatial_dims": 2, "num_classes": 3, "base_filters": 16, "depth": 4},
    "lrcsnet_tiny": {"_target_": "src.models.nets.lrcsnet.LRCSNet", "num_classes": 3, "base_filters": 2},
    # the pipeline alone (read, normalise, net, argmax, write) at almost no FLOPs per voxel
    "pointwise": {"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 3, "kernel_size": 1},
}
ROI = 256  # the models' configured window (conf/model/base/segmentation.yaml inference.roi_size)


def build_net(name: str, ckpt: str | None = None):
    """The benchmark net ``name`` with seeded random weights, or the net of a segmentation
    checkpoint (its own architecture and trained weights)."""
    import torch
    from hydra.utils import instantiate

    torch.manual_seed(0)
    if not ckpt:
        return instantiate(NETS[name]).eval()
    from src.models.checkpoint import load_segmentation_checkpoint

    return load_segmentation_checkpoint(ckpt)[0].net.eval()


def calibrate_batch_norm(net, volume: str, value_range: tuple[float, float]) -> None:
    """Set the batch-norm statistics of an untrained net from 4 slices of the volume, so that
    its labels vary with the data (identical for both methods; no weights are trained)."""
    import torch

    from src.data.io.volumes import open_volume
    from src.data.transforms import normalize_percentile

    with open_volume(volume) as source:
        zs = np.linspace(0, source.shape[0] - 1, 4).round().astype(int)
        x = np.stack([source.read((slice(z, z + 1),))[0] for z in zs])
    for m in net.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    net.train()
    with torch.no_grad():
        net(torch.from_numpy(normalize_percentile(x, value_range=value_range))[:, None])
    net.eval()


def flops_per_voxel(name: str, ckpt: str | None = None, side: int = 256) -> float:
    """Net FLOPs (2 per multiply-add) per output voxel, counted on one side × side slice."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net = build_net(name, ckpt)
    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        net(torch.zeros(1, 1, side, side))
    return counter.get_total_flops() / side**2


def write_volume(path: Path, shape: tuple[int, int, int], dtype=np.float32, slab: int = 32) -> None:
    """A smooth random grey volume (three phases plus noise), written slab by slab (bounded
    memory); slabs are shifted copies of one random slab, so large volumes are quick to make."""
    import tifffile
    from scipy import ndimage

    rng = np.random.default_rng(0)
    slab = min(slab, shape[0])
    field = ndimage.gaussian_filter(rng.standard_normal((slab, *shape[1:]), np.float32), (1, 3, 3))
    grey = np.digitize(field, np.quantile(field[0], [0.4, 0.55])).astype(np.float32)
    grey += rng.normal(0, 0.3, grey.shape).astype(np.float32)
    if np.issubdtype(np.dtype(dtype), np.integer):
        grey = np.clip(grey * 8000 + 10000, 0, 65535)
    grey = grey.astype(dtype)
    mapped = tifffile.memmap(path, shape=shape, dtype=dtype, photometric="minisblack", bigtiff=True)
    for k, z in enumerate(range(0, shape[0], slab)):
        n = min(slab, shape[0] - z)
        mapped[z:z + n] = np.roll(grey[:n], (37 * k, 91 * k), axis=(1, 2))
        mapped.flush()
    del mapped


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def worker(a: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints a JSON line."""
    import torch

    from src.data.io.volumes import open_volume, sample_range

    torch.set_num_threads(a.threads)
    net = build_net(a.model, a.ckpt)
    labels_path = Path(a.labels_out)
    value_range = sample_range(open_volume(a.volume))
    if not a.ckpt:
        calibrate_batch_norm(net, a.volume, value_range)
    if a.method == "monai":
        import tifffile
        from monai.inferers import SliceInferer

        from src.data.transforms import normalize_percentile

        start = time.perf_counter()
        image = normalize_percentile(tifffile.imread(a.volume), value_range=value_range)
        inferer = SliceInferer(roi_size=(ROI, ROI), spatial_dim=0, progress=False)
        with torch.inference_mode():
            probs = inferer(torch.from_numpy(image)[None, None], net)
        labels = probs[0].argmax(0).to(torch.uint8).numpy()
        seconds = time.perf_counter() - start
        np.save(labels_path, labels)
    else:
        import zarr

        from src.inference.tiled import TiledPredictor
        from src.inference.volume_prediction import predict_volume

        predictor = TiledPredictor(net, 2, net.size_multiple if hasattr(net, "size_multiple") else 8,
                                   channels_last=True, precision=a.precision,
                                   compile=a.compile == "true")
        out = labels_path.with_suffix(".zarr")
        start = time.perf_counter()
        predict_volume(predictor, a.volume, out, value_range=value_range, progress=False, overwrite=True)
        seconds = time.perf_counter() - start
        rss = peak_rss_mb()
        np.save(labels_path, zarr.open_group(str(out), mode="r")["labels"][:])
        print(json.dumps({"seconds": seconds, "peak_rss_mb": rss}))
        return
    print(json.dumps({"seconds": seconds, "peak_rss_mb": peak_rss_mb()}))


def run_worker(**kw) -> dict:
    args = [sys.executable, __file__, "_worker"] + [f"--{k.replace('_', '-')}={v}" for k, v in kw.items()]
    env = {**os.environ, "OMP_NUM_THREADS": str(kw["threads"])}
    proc = subprocess.run(args, capture_output=True, text=True, env=env, cwd=ROOT)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def speed(a: argparse.Namespace) -> None:
    ckpts = dict(spec.split("=", 1) for spec in a.ckpt)
    for model, path in ckpts.items():
        if model not in a.models or not Path(path).is_file():
            raise SystemExit(f"--ckpt {model}={path}: expected one of --models {a.models} and an existing checkpoint file")
    rows = []
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        for spec in a.shapes:
            shape = tuple(int(v) for v in spec.lower().split("x")) if "x" in spec else (int(spec),) * 3
            side = "x".join(map(str, shape))
            volume = Path(tmp) / f"vol{side}.tif"
            write_volume(volume, shape)
            n_vox = int(np.prod(shape))
            for model in a.models:
                ckpt = ckpts.get(model, "")
                fpv = flops_per_voxel(model, ckpt)
                comp = "true" if a.compile else "false"
                methods = [("MONAI SliceInferer (defaults)", "monai", "fp32", "false"),
                           ("ours fp32", "ours", "fp32", comp), ("ours bf16", "ours", "bf16", comp)]
                times: dict[str, list[dict]] = {m[0]: [] for m in methods}
                for _ in range(a.repeats):
                    for label, method, precision, compiled in methods:
                        res = run_worker(model=model, method=method, precision=precision, volume=volume,
                                         labels_out=Path(tmp) / f"{model}_{side}_{method}_{precision}_{compiled}.npy",
                                         threads=a.threads, compile=compiled, ckpt=ckpt)
                        times[label].append(res)
                        print(f"  {model} {side} {label}: {res['seconds']:.1f} s, {res['peak_rss_mb']:.0f} MB", flush=True)
                peer = np.load(Path(tmp) / f"{model}_{side}_monai_fp32_false.npy")
                peer_s = float(np.median([r["seconds"] for r in times[methods[0][0]]]))
                for label, method, precision, compiled in methods:
                    sec = float(np.median([r["seconds"] for r in times[label]]))
                    rss = float(np.median([r["peak_rss_mb"] for r in times[label]]))
                    labels = np.load(Path(tmp) / f"{model}_{side}_{method}_{precision}_{compiled}.npy")
                    rows.append({"model": model, "size": side, "method": label, "seconds": sec,
                                 "mvox_s": n_vox / sec / 1e6, "peak_rss_mb": rss, "speedup": peer_s / sec,
                                 "agree": float((labels == peer).mean()), "kflop_per_voxel": fpv / 1e3,
                                 "gflop_s": fpv * n_vox / sec / 1e9})
    print_table(rows, a)


def print_table(rows: list[dict], a: argparse.Namespace) -> None:
    machine = f"{platform.processor() or platform.machine()}, {a.threads} threads, {time.strftime('%Y-%m-%d')}"
    weights = "trained weights (" + ", ".join(a.ckpt) + ")" if a.ckpt else "untrained weights, batch norm set from 4 slices"
    print(f"\nWhole-volume prediction, {weights} ({machine})\n")
    print("| model | volume | method | time (s) | Mvoxel/s | peak RSS (MB) | speed-up vs MONAI | labels = MONAI | kFLOP/voxel | GFLOP/s |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['size']} | {r['method']} | {r['seconds']:.1f} | {r['mvox_s']:.3f} | {r['peak_rss_mb']:.0f} | "
              f"{r['speedup']:.2f}x | {100 * r['agree']:.2f}% | {r['kflop_per_voxel']:.0f} | {r['gflop_s']:.1f} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


def _status_kb(pid: int, field: str) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    m = re.search(rf"^{field}:\s+(\d+) kB", text, re.M)
    return int(m.group(1)) if m else 0


def run_polled(cmd: list[str], env: dict, interval: float = 0.01,
               output: Path | None = None) -> tuple[subprocess.CompletedProcess, dict]:
    """Run ``cmd``, polling its ``/proc/<pid>/status`` every ``interval`` s from this (parent)
    process; returns the process and the peaks (MB) of ``RssAnon`` (anonymous memory: heap,
    tensors; not the page cache of memory-mapped inputs), ``RssFile`` and ``VmRSS``. With the
    prediction's ``output``, ``timeline`` lists [chunks done, peak RssAnon so far (MB)] each time
    a chunk's done-marker appears (the growth within one run)."""
    import threading

    peaks = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
    timeline: list[list[float]] = []
    done = output.with_name(output.name + ".progress") / "done" if output is not None else None
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, cwd=ROOT, env=env)
        stop = threading.Event()

        def poll() -> None:
            last = 0
            while not stop.is_set():
                for k in peaks:
                    peaks[k] = max(peaks[k], _status_kb(proc.pid, k))
                n = sum(1 for _ in done.iterdir()) if done is not None and done.is_dir() else 0
                if n > last:
                    timeline.append([n, round(peaks["RssAnon"] / 1024, 1)])
                    last = n
                stop.wait(interval)

        thread = threading.Thread(target=poll, daemon=True)
        thread.start()
        rc = proc.wait()
        stop.set()
        thread.join()
        out.seek(0)
        err.seek(0)
        result = subprocess.CompletedProcess(cmd, rc, out.read(), err.read())
    return result, {**{k: v / 1024 for k, v in peaks.items()}, "timeline": timeline}


def memory(a: argparse.Namespace) -> None:
    """Peak anonymous RSS of ``predict.py`` (polled) against the volume size, per model."""
    import torch
    import zarr

    from src.models.segmentation import SegmentationModule

    if a.shape is not None:
        if a.shape[1] != a.shape[2]:
            raise SystemExit(f"--shape: slices must be square (y = x), got {a.shape}")
        a.slices, a.sides = [a.shape[0]], [a.shape[1]]
    rows = []
    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {a.threads} threads, {time.strftime('%Y-%m-%d')}"
    with tempfile.TemporaryDirectory(dir=a.tmp) as tmp:
        for side in a.sides:
            for n in a.slices:
                shape = (n, side, side)
                volume = Path(tmp) / f"vol_{n}x{side}.tif"
                t0 = time.perf_counter()
                write_volume(volume, shape, np.uint16)
                print(f"wrote {volume.name} {shape} uint16, {volume.stat().st_size / 2**30:.2f} GiB in "
                      f"{time.perf_counter() - t0:.0f} s", flush=True)
                for model in a.models:
                    torch.manual_seed(0)
                    module = SegmentationModule(net=NETS[model], class_names=["NMC", "CBD", "pore"], name=model)
                    ckpt = Path(tmp) / f"{model}.ckpt"
                    torch.save({"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict()}, ckpt)
                    out = Path(tmp) / "seg.zarr"
                    cmd = [sys.executable, "predict.py", f"ckpt_path={ckpt}", f"input={volume}", f"output={out}",
                           "progress=false", "overwrite=true", f"hydra.run.dir={tmp}/run", *a.overrides]
                    t0 = time.perf_counter()
                    proc, peaks = run_polled(cmd, {**os.environ, "OMP_NUM_THREADS": str(a.threads)}, output=out)
                    seconds = time.perf_counter() - t0
                    if proc.returncode:
                        raise RuntimeError(proc.stderr[-3000:] + proc.stdout[-3000:])
                    logs = proc.stdout + proc.stderr
                    vps = re.search(r"([\d.e+]+) voxels/s", logs)
                    tiling = re.search(r"tiling: (.*)", logs)
                    labels = zarr.open_group(str(out), mode="r")["labels"]
                    every = labels[:: max(1, n // 8)]
                    fractions = np.bincount(every.reshape(-1), minlength=3) / every.size
                    shutil.rmtree(out, ignore_errors=True)
                    row = {"model": model, "shape": "x".join(map(str, shape)), "gib": volume.stat().st_size / 2**30,
                           "seconds": seconds, "mvox_s": float(vps.group(1)) / 1e6 if vps else float("nan"),
                           "rss_anon_mb": peaks["RssAnon"], "rss_file_mb": peaks["RssFile"], "vm_rss_mb": peaks["VmRSS"],
                           "tiling": tiling.group(1).strip() if tiling else "-", "fractions": np.round(fractions, 3).tolist(),
                           "overrides": " ".join(a.overrides), "timeline": peaks["timeline"]}
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                volume.unlink()
    print(f"\nWhole-volume prediction memory, predict.py TIFF (uint16) → Zarr ({machine}); peaks polled from "
          "/proc/<pid>/status every 10 ms\n")
    print("| model | volume (z×y×x) | GiB | overrides | time (s) | Mvoxel/s (predict) | peak RssAnon (MB) | peak RssFile (MB) | tiling |")
    print("|---|---|---:|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['model']} | {r['shape']} | {r['gib']:.2f} | {r['overrides'] or '-'} | {r['seconds']:.0f} | {r['mvox_s']:.3f} | "
              f"{r['rss_anon_mb']:.0f} | {r['rss_file_mb']:.0f} | {r['tiling']} |")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--shapes", nargs="+", default=["256"], help="cube sides (256) or ZxYxX (32x512x512)")
    s.add_argument("--models", nargs="+", default=["lrcsnet", "unet"], choices=sorted(NETS))
    s.add_argument("--repeats", type=int, default=1)
    s.add_argument("--compile", action="store_true", help="torch.compile our path (compile time included)")
    s.add_argument("--ckpt", nargs="*", default=[], metavar="MODEL=CKPT",
                   help="trained segmentation checkpoint per model (its net and weights) instead of random weights")
    s.add_argument("--threads", type=int, default=2)
    s.add_argument("--tmp", default=None)
    s.add_argument("--json", default=None)
    m = sub.add_parser("memory")
    m.add_argument("--slices", type=int, nargs="+", default=[256, 1024, 2048], help="volume depths (z)")
    m.add_argument("--sides", type=int, nargs="+", default=[1024], help="square slice sides (y = x)")
    m.add_argument("--shape", type=int, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="one volume (square slices, y = x), instead of --slices/--sides")
    m.add_argument("--models", nargs="+", default=["lrcsnet", "unet"], choices=sorted(NETS))
    m.add_argument("--threads", type=int, default=2)
    m.add_argument("--tmp", default=None)
    m.add_argument("--json", default=None)
    m.add_argument("overrides", nargs="*", help="predict.py overrides, e.g. tiling.batch_size=4")
    w = sub.add_parser("_worker")
    for name in ("model", "method", "precision", "volume", "labels-out"):
        w.add_argument(f"--{name}", required=True)
    w.add_argument("--threads", type=int, default=2)
    w.add_argument("--compile", default="false", choices=["true", "false"])
    w.add_argument("--ckpt", default="")
    a = p.parse_args()
    {"speed": speed, "memory": memory, "_worker": worker}[a.cmd](a)


if __name__ == "__main__":
    main()
