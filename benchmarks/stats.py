"""Time every 3D statistic of a 3-phase volume next to the peer library doing the same job.

    python benchmarks/stats.py [--volume PATH --label-values 85,170,0] [--size 256]
                               [--tortuosity-phases pore --tortuosity-axes 0]

Default volume: ``../shared/data/electrode-volumes/taufactor_electrode.tiff`` (0 = pore,
85 = NMC, 170 = CBD, 40 nm voxels assumed) cropped to ``--size``³, else a synthetic electrode
(:func:`src.simulation.microstructure.generate_microstructure`). Peers, run in the same process on the same
labels: porespy ``phase_fraction`` (volume fraction), taufactor ``specific_surface_area``
(marching cubes, SSA), porespy ``snow_partitioning`` (particle separation: count),
porespy ``trim_nonpercolating_paths`` (connectivity along z), porespy ``local_thickness``
(``method="dt"``; ours uses its default ``"bf"``: mean thickness), ``taufactor.Solver`` called
directly (tortuosity of the pore and of the solid network NMC+CBD; ours: AMG-preconditioned CG).
Prints (statistic, ours s, peer s, ratio, value ours, value peer), the total, and the time of
one ``compute_statistics`` call with the defaults of ``conf/statistics/default.yaml`` (what
``analyze.py`` runs), the time of each statistic in it.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from src.analysis.morphology import (
    compute_statistics,
    local_thickness,
    particle_statistics,
    remap_labels,
    surface_statistics,
    volume_fractions,
)
from src.analysis.transport import AXIS_NAMES, percolating_fraction, tortuosity_factor

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "electrode-volumes"
CONFIG = Path(__file__).resolve().parents[1] / "conf"
PHASES = ["NMC", "CBD", "pore"]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        out = fn()
    return time.perf_counter() - start, out


def load(args: argparse.Namespace) -> tuple[np.ndarray, str]:
    path = args.volume or SHARED / "taufactor_electrode.tiff"
    if path.exists():
        from src.data.io import read_image

        raw = np.asarray(read_image(path, mmap=False))[: args.size, : args.size, : args.size]
        values = [int(v) for v in args.label_values.split(",")]
        return remap_labels(raw, values, str(path)), f"{path.name} {raw.shape}"
    from src.simulation.microstructure import MicrostructureConfig, generate_microstructure

    cfg = MicrostructureConfig(shape=(args.size,) * 3, voxel_size_nm=args.voxel_size_nm)
    return generate_microstructure(cfg, seed=0), f"synthetic {cfg.shape}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--volume", type=Path, default=None)
    parser.add_argument("--label-values", default="85,170,0", help="stored values of NMC,CBD,pore")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--voxel-size-nm", type=float, default=40.0)
    parser.add_argument("--tortuosity-phases", default="pore,NMC+CBD",
                        help="comma list of phases or unions (NMC+CBD: the solid network); '' skips")
    parser.add_argument("--tortuosity-axes", default="0", help="comma list of 0 (z), 1 (y), 2 (x)")
    parser.add_argument("--skip-peers", action="store_true")
    parser.add_argument("--chunked-size", type=int, default=0,
                        help="instead: write a SIZE^3 volume (the volume mirrored into tiles) and analyse it "
                             "chunk by chunk (analyze.py chunked.enabled=true), with the peak RSS")
    parser.add_argument("--chunk", type=int, default=128)
    parser.add_argument("--chunked-thickness", action="store_true",
                        help="also local thickness in the chunked run (porespy per block: the slowest part)")
    parser.add_argument("--tmp", type=Path, default=Path("/tmp"))
    parser.add_argument("--skip-default", action="store_true",
                        help="skip the timing of all default statistics in one compute_statistics call")
    args = parser.parse_args()
    if args.chunked_size:
        return chunked_benchmark(args)
    import porespy
    import taufactor
    import taufactor.metrics
    import torch

    labels, what = load(args)
    um = args.voxel_size_nm * 1e-3
    masks = {p: labels == i for i, p in enumerate(PHASES)}
    print(f"volume: {what}, voxel {args.voxel_size_nm} nm, {os.cpu_count()} CPUs, "
          f"torch threads {torch.get_num_threads()}")
    rows: list[tuple[str, float, float, str, str]] = []

    def add(name: str, ours: Callable[[], Any], peer: Callable[[], Any] | None,
            show: Callable[[Any], str], show_peer: Callable[[Any], str]) -> None:
        t_ours, v_ours = timed(ours)
        t_peer, v_peer = timed(peer) if peer and not args.skip_peers else (float("nan"), None)
        rows.append((name, t_ours, t_peer, show(v_ours), show_peer(v_peer) if v_peer is not None else "-"))
        print(f"  done {name}: {t_ours:.2f} s / {t_peer:.2f} s", flush=True)

    def fmt(d: dict) -> str:
        return " ".join(f"{k}={v:.4g}" for k, v in d.items())

    add("volume_fraction", lambda: volume_fractions(labels, PHASES),
        lambda: porespy.metrics.phase_fraction(labels),
        fmt, lambda v: " ".join(f"{PHASES[int(k)]}={x:.4g}" for k, x in v.items()))
    phases = {"NMC": 0, "CBD": 1, "pore": 2}
    add("specific_surface_area (um-1)",
        lambda: surface_statistics(labels, PHASES, um)["specific_surface_area_um-1"],
        lambda: taufactor.metrics.specific_surface_area(labels, phases=phases, method="marching_cubes",
                                                        device="cpu"),
        fmt, lambda v: fmt({k: x / um for k, x in v.items()}))
    add("particles NMC (count all)", lambda: particle_statistics(masks["NMC"], um),
        lambda: porespy.filters.snow_partitioning(masks["NMC"]),
        lambda v: f"{v['particle_count_all']} (d50 {v['d50_um']:.3f} um)",
        lambda v: f"{int(v.regions.max())}")
    add("percolating_fraction z (all phases)",
        lambda: {p: percolating_fraction(m, (0,))["z"] for p, m in masks.items()},
        lambda: {p: porespy.filters.trim_nonpercolating_paths(m, axis=0).sum() / m.sum()
                 for p, m in masks.items()}, fmt, fmt)
    add("local_thickness pore (mean um)", lambda: local_thickness(masks["pore"], um),
        lambda: porespy.filters.local_thickness(masks["pore"], method="dt"),
        lambda v: f"{v['mean_um']:.4g}", lambda v: f"{2 * v[masks['pore']].mean() * um:.4g}")
    for name in filter(None, args.tortuosity_phases.split(",")):
        if name not in masks:
            masks[name] = np.isin(labels, [PHASES.index(part) for part in name.split("+")])
        for axis in (int(a) for a in args.tortuosity_axes.split(",")):
            def peer(m: np.ndarray = masks[name], a: int = axis) -> float:
                solver = taufactor.Solver(np.moveaxis(m, a, 0).astype(np.uint8), device="cpu")
                return float(solver.solve(verbose=False)[0])

            add(f"tortuosity {name} {AXIS_NAMES[axis]}",
                lambda m=masks[name], a=axis: tortuosity_factor(m, a),
                peer, lambda v: f"{v['tortuosity_factor']:.4f} ({v['iterations']} it)", lambda v: f"{v:.4f}")

    head = f"{'statistic':38s} {'ours s':>8s} {'peer s':>8s} {'ratio':>6s}  value ours | value peer"
    print("\n" + head + "\n" + "-" * len(head))
    for name, t_ours, t_peer, v_ours, v_peer in rows:
        print(f"{name:38s} {t_ours:8.2f} {t_peer:8.2f} {t_ours / t_peer:6.2f}  {v_ours} | {v_peer}")
    print(f"{'total (one at a time)':38s} {sum(r[1] for r in rows):8.2f} {np.nansum([r[2] for r in rows]):8.2f}")
    if not args.skip_default:
        from omegaconf import OmegaConf

        options = OmegaConf.to_container(OmegaConf.load(CONFIG / "statistics" / "default.yaml"), resolve=True)
        start = time.perf_counter()
        stats = compute_statistics(labels, PHASES, args.voxel_size_nm, **options)
        total = time.perf_counter() - start
        each = ", ".join(f"{k} {v:.1f} s" for k, v in stats["timings_s"].items())
        print(f"{'all default statistics (analyze.py)':38s} {total:8.2f}  ({each}; the tortuosity pairs "
              f"solved in parallel processes from the start, the others meanwhile)")


def _peak_rss_poller() -> tuple[Any, dict[str, float]]:
    """A thread polling this process' RSS (VmRSS) every 0.2 s; returns (stop event, {"peak": bytes})."""
    import threading

    peak = {"peak": 0.0}
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        peak["peak"] = max(peak["peak"], float(line.split()[1]) * 1024)
            stop.wait(0.2)

    threading.Thread(target=poll, daemon=True).start()
    return stop, peak


def chunked_benchmark(args: argparse.Namespace) -> None:
    """A volume larger than the memory it is allowed, analysed chunk by chunk; time and peak RSS."""
    import tifffile

    from src.analysis.chunked import chunked_statistics

    labels, what = load(args)
    size, tile = args.chunked_size, labels.shape[0]
    path = args.tmp / f"stats_chunked_{size}.tif"
    if not path.exists():  # mirrored tiles (continuous across tile borders), one page at a time
        with tifffile.TiffWriter(path, bigtiff=True) as tif:
            for z in range(size):
                zi = z % (2 * tile)
                page = labels[zi if zi < tile else 2 * tile - 1 - zi]
                reps = -(-size // tile)
                row = np.concatenate([page, page[::-1]] * reps, axis=0)[:size]
                tif.write(np.concatenate([row, row[:, ::-1]] * reps, axis=1)[:, :size], contiguous=True)
    del labels
    print(f"volume: {size}^3 uint8 ({size**3 / 2**30:.2f} GiB) from {what}, chunk {args.chunk}, "
          f"{os.cpu_count()} CPUs", flush=True)
    stop, peak = _peak_rss_poller()
    start = time.perf_counter()
    stats = chunked_statistics(path, PHASES, args.voxel_size_nm, chunk=args.chunk, rev_phases=["pore"],
                               thickness_phases=["pore"] if args.chunked_thickness else [])
    total = time.perf_counter() - start
    stop.set()
    print(f"{'statistic':28s} {'s':>8s}")
    for key, value in stats["timings_s"].items():
        print(f"{key:28s} {value:8.1f}")
    print(f"{'total':28s} {total:8.1f}   peak RSS {peak['peak'] / 2**30:.2f} GiB")
    print("fractions", {k: round(v, 4) for k, v in stats["volume_fraction"].items()},
          "components NMC", stats["components"]["NMC"]["count"],
          "REV tau pore", [round(t, 3) for t in stats["rev_tortuosity"]["pore"]["tortuosity_factor"]])


if __name__ == "__main__":
    main()
