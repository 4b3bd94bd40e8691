"""Benchmark: our torch operator vs ASTRA 2D CPU, same run, same phantom and geometry.

For each geometry (slice size and number of angles over [0, pi)): a batch of Shepp-Logan slices. Times forward
projection, adjoint, FBP (ramp) and SIRT (50 iterations) per slice (median of ``--repeat``
runs), the ratio ASTRA / ours (> 1: ours faster) and the quality (PSNR vs the phantom, data range
of the phantom). Our one-off cost of building the sparse weights is reported separately.

    python benchmarks/recon_operators.py [--geometries 256:180 512:360] [--slices 64] [--sirt-slices 8] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch

from src.recon import ParallelBeamProjector, fbp, sirt
from src.recon.backends import astra_available, astra_backproject, astra_project, astra_recon


def _phantoms(n: int, count: int) -> np.ndarray:
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    base = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True).astype(np.float32)
    return np.stack([np.roll(base, k % 7 - 3, axis=k % 2) for k in range(count)])


def _time(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def _psnr(x: np.ndarray, ref: np.ndarray) -> float:
    return float(10 * np.log10(np.ptp(ref) ** 2 / np.mean((x - ref) ** 2)))


def _bench_size(n: int, args: argparse.Namespace, theta: np.ndarray, has_astra: bool) -> None:
    """Print the table rows for ``n x n`` slices at the angles ``theta``."""
    ph = _phantoms(n, args.slices)
    op = ParallelBeamProjector((n, n), theta)
    t0 = time.perf_counter()
    list(op._blocks(torch.float32, torch.device("cpu")))  # build + cache the weights
    setup = time.perf_counter() - t0
    x = torch.from_numpy(ph)
    b = args.slices
    t_fwd, sino_t = _time(lambda: op(x), args.repeat)
    sino = sino_t.numpy()  # type: ignore[union-attr]
    t_adj, _ = _time(lambda: op.adjoint(sino_t), args.repeat)  # type: ignore[arg-type]
    t_fbp, rec = _time(lambda: fbp(sino_t, op), args.repeat)  # type: ignore[arg-type]
    s = args.sirt_slices
    t_sirt, rec_s = _time(lambda: sirt(sino_t[:s], op, 50), 1)  # type: ignore[index]
    q_fbp = _psnr(rec.numpy(), ph)  # type: ignore[union-attr]
    q_sirt = _psnr(rec_s.numpy(), ph[:s])  # type: ignore[union-attr]
    rows = [("forward", b, t_fwd, None, None), ("adjoint", b, t_adj, None, None),
            ("FBP", b, t_fbp, q_fbp, None), ("SIRT50", s, t_sirt, q_sirt, None)]
    if has_astra:
        tomo = sino.transpose(1, 0, 2)
        a_fwd, _ = _time(lambda: astra_project(ph, theta, n), args.repeat)
        a_adj, _ = _time(lambda: astra_backproject(sino, theta, (n, n)), args.repeat)
        a_fbp, a_rec = _time(lambda: astra_recon(tomo, theta), args.repeat)
        a_sirt, a_rec_s = _time(
            lambda: astra_recon(tomo[:, :s], theta, algorithm="sirt", num_iter=50), 1)
        astra_t = [a_fwd, a_adj, a_fbp, a_sirt]
        astra_q = [None, None, _psnr(a_rec, ph), _psnr(a_rec_s, ph[:s])]  # type: ignore[arg-type]
    else:
        astra_t, astra_q = [None] * 4, [None] * 4
    for (name, count, t, q, _), ta, qa in zip(rows, astra_t, astra_q, strict=True):
        ours_ms = 1e3 * t / count
        astra_ms = f"{1e3 * ta / count:12.2f}" if ta is not None else f"{'-':>12}"
        ratio = f"{ta / t:6.2f}" if ta is not None else f"{'-':>6}"
        qo = f"{q:10.2f}" if q is not None else f"{'':>10}"
        qa_s = f"{qa:11.2f}" if qa is not None else f"{'':>11}"
        print(f"{n:>4}/{len(theta):<4} {name:>8} {count:>6} {ours_ms:11.2f} {astra_ms} {ratio} {qo} {qa_s}")
    print(f"{n:>4}/{len(theta):<4} {'setup':>8} {'-':>6} {1e3 * setup:11.0f}   (ours: sparse weights, "
          f"{op.cache_bytes() / 2**20:.0f} MiB cached, once per geometry)")



def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--geometries", nargs="+", default=["256:180", "512:360"],
                        help="SIZE:ANGLES pairs, e.g. 256:180 512:360")
    parser.add_argument("--slices", type=int, default=64)
    parser.add_argument("--sirt-slices", type=int, default=8, help="slices timed for SIRT")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    has_astra = astra_available()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU; "
          f"ASTRA {'2D CPU' if has_astra else 'not installed'}")
    header = (f"{'size/angles':>9} {'op':>8} {'slices':>6} {'ours ms/sl':>11} {'astra ms/sl':>12} "
              f"{'ratio':>6} {'PSNR ours':>10} {'PSNR astra':>11}")
    print(header)
    print("-" * len(header))
    for geometry in args.geometries:
        n, n_angles = (int(v) for v in geometry.split(":"))
        _bench_size(n, args, np.linspace(0, np.pi, n_angles, endpoint=False), has_astra)


if __name__ == "__main__":
    main()
