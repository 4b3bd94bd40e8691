"""Benchmark: whole-call reconstruction time, ours vs ASTRA's CPU algorithms, in the same run.

For each case (columns x angles over [0, pi) x slices, algorithm) a fresh child process projects
a stack of Shepp-Logan slices (not timed), then times the *whole call* a user makes --
``recon(tomo, theta, algorithm=...)`` for ours (operator set-up included) and the same call with
``backend="astra"`` (ASTRA 2D CPU, geometry creation included) -- and reports the median of
``--repeat`` calls, the first call, the ratio ours / ASTRA (<= 1: ours as fast or faster), the
peak resident memory of the process (``ru_maxrss``, imports and data included) and the PSNR
against the phantom (data range of the phantom). Iterative algorithms are reported per
iteration as well. Cases alternate ours / ASTRA so that both see the same machine load.

``gridrec`` cases (the NUFFT Fourier method, :mod:`src.recon.gridrec`) are timed against our FBP
(one more child, same data) and ASTRA's CPU FBP; the last two columns give our FBP's time and
gridrec / our FBP. ``--device cuda`` runs ours on a GPU and prints the card in the header (ASTRA
stays on the CPU; gridrec is CPU only and is skipped there).

    PYTHONPATH=. python benchmarks/recon_operators.py [--cases 1024:360:8:fbp ...] [--repeat 3]
        [--threads N] [--device cpu|cuda]
    PYTHONPATH=. python benchmarks/recon_operators.py --cases 1024:360:8:gridrec 2048:1500:2:gridrec

``--small`` instead times one projection + backprojection of a batch of 8 at the learned nets'
sizes, stored CSR weights (``cache=True``) against matrix-free (``cache=False``): the measurement
behind the operator's ``CACHE_MAX_ENTRIES``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

DEFAULT_CASES = [
    "256:360:8:fbp", "512:720:8:fbp", "1024:360:8:fbp", "1024:1500:2:fbp", "2048:1500:2:fbp",
    "256:360:8:sirt:20", "512:360:4:sirt:10", "1024:360:2:sirt:5", "512:360:4:cgls:10",
]


def _phantoms(n: int, count: int):
    import numpy as np
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    base = resize(shepp_logan_phantom(), (n, n), anti_aliasing=True).astype(np.float32)
    return np.stack([np.roll(base, k % 7 - 3, axis=k % 2) for k in range(count)])


def _child(spec: dict) -> dict:
    """Run one case (ours or ASTRA) in this process and return its figures."""
    import resource

    import numpy as np
    import torch

    if spec["threads"]:
        torch.set_num_threads(int(spec["threads"]))
    from src.recon import project, recon

    n, n_angles, slices = spec["n"], spec["angles"], spec["slices"]
    theta = np.linspace(0, np.pi, n_angles, endpoint=False)
    ph = _phantoms(n, slices)
    tomo = project(ph, theta, pad=False)  # (angles, slices, n), ours; not timed
    base_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    times, rec = [], None
    device = spec.get("device", "cpu") if spec["backend"] == "torch" else "cpu"
    for _ in range(spec["repeat"]):
        t0 = time.perf_counter()
        rec = recon(tomo, theta, algorithm=spec["algorithm"], backend=spec["backend"],
                    num_iter=spec["num_iter"], device=device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    yy, xx = np.mgrid[:n, :n] + 0.5 - n / 2
    inside = xx**2 + yy**2 <= (n / 2) ** 2
    err = np.mean((rec[:, inside] - ph[:, inside]) ** 2)
    psnr = float(10 * np.log10(np.ptp(ph) ** 2 / err))
    return {"median": statistics.median(times), "first": times[0], "peak_gib": peak,
            "base_gib": base_rss, "psnr": psnr, "threads": torch.get_num_threads()}


def _small(repeat: int) -> None:
    import numpy as np
    import torch

    from src.recon import ParallelBeamProjector

    print(f"operator pair (forward + adjoint), batch 8, {torch.get_num_threads()} threads, "
          f"median of {repeat}")
    print(f"{'size x angles':>14} {'stored ms':>10} {'matrix-free ms':>15} {'ratio':>6} "
          f"{'build ms':>9}")
    for n, n_angles in ((64, 30), (128, 60), (128, 120), (256, 180)):
        theta = np.linspace(0, np.pi, n_angles, endpoint=False)
        x = torch.rand(8, n, n)
        row = []
        build = 0.0
        for cache in (True, False):
            op = ParallelBeamProjector((n, n), theta, cache=cache)
            t0 = time.perf_counter()
            op.adjoint(op(x))  # first call: compiles / builds
            build = time.perf_counter() - t0 if cache else build
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                op.adjoint(op(x))
                times.append(time.perf_counter() - t0)
            row.append(1e3 * statistics.median(times))
        print(f"{f'{n}^2 x {n_angles}':>14} {row[0]:10.1f} {row[1]:15.1f} "
              f"{row[0] / row[1]:6.2f} {1e3 * build:9.0f}", flush=True)


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _run(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"case {spec} failed:\n{res.stderr[-3000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=DEFAULT_CASES,
                        help="COLUMNS:ANGLES:SLICES:ALGORITHM[:ITERATIONS] (fbp, gridrec, sirt, cgls)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads for ours (0: default)")
    parser.add_argument("--no-astra", action="store_true")
    parser.add_argument("--device", default="cpu", help="ours on cpu or cuda (ASTRA: CPU)")
    parser.add_argument("--small", action="store_true",
                        help="stored vs matrix-free operator at the learned nets' sizes")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.small:
        _small(max(args.repeat, 5))
        return
    if args.child:
        print(json.dumps(_child(json.loads(args.child))))
        return
    import torch

    from src.recon.backends import astra_available
    from src.recon.operators import numba_available

    has_astra = astra_available() and not args.no_astra
    on_gpu = args.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: torch sees no CUDA device")
    card = (f"GPU {torch.cuda.get_device_name(torch.device(args.device))} (CUDA "
            f"{torch.version.cuda}), ours on it" if on_gpu else "no GPU used")
    print(f"{_cpu_name()}, torch {torch.__version__} "
          f"({args.threads or torch.get_num_threads()} threads), kernel "
          f"{'torch (CUDA)' if on_gpu else 'numba' if numba_available() else 'torch'}; {card}; ASTRA "
          f"{'2D CPU (one thread)' if has_astra else 'not run'}; {time.strftime('%Y-%m-%d')}")
    header = (f"{'cols x angles x slices':>22} {'algo':>8} {'ours s':>8} {'astra s':>8} "
              f"{'ratio':>6} {'ours/it':>8} {'astra/it':>8} {'ours 1st':>8} {'RSS ours':>8} "
              f"{'RSS astra':>9} {'PSNR ours':>9} {'PSNR astra':>10} {'our fbp s':>9} {'vs fbp':>6}")
    print(header)
    print("-" * len(header))
    for case in args.cases:
        parts = case.split(":")
        n, n_angles, slices = (int(v) for v in parts[:3])
        algorithm = parts[3] if len(parts) > 3 else "fbp"
        n_iter = int(parts[4]) if len(parts) > 4 else (None if algorithm in ("fbp", "gridrec") else 10)
        spec = {"n": n, "angles": n_angles, "slices": slices, "algorithm": algorithm,
                "num_iter": n_iter, "repeat": args.repeat, "threads": args.threads,
                "device": args.device}
        if algorithm == "gridrec" and on_gpu:
            print(f"{case}: skipped (gridrec runs on the CPU)")
            continue
        ours = _run({**spec, "backend": "torch"})
        peer = "fbp" if algorithm == "gridrec" else algorithm  # ASTRA has no gridrec
        our_fbp = _run({**spec, "backend": "torch", "algorithm": "fbp",
                        "repeat": 1 if n >= 2048 else args.repeat}) if algorithm == "gridrec" else None
        astra = _run({**spec, "backend": "astra", "algorithm": peer,
                      "repeat": 1 if n >= 2048 else args.repeat,
                      "threads": 0}) if has_astra else None
        it = n_iter or 1
        a_t = f"{astra['median']:8.2f}" if astra else f"{'-':>8}"
        ratio = f"{ours['median'] / astra['median']:6.2f}" if astra else f"{'-':>6}"
        a_it = f"{astra['median'] / it:8.3f}" if astra and n_iter else f"{'':>8}"
        o_it = f"{ours['median'] / it:8.3f}" if n_iter else f"{'':>8}"
        a_rss = f"{astra['peak_gib']:8.2f}G" if astra else f"{'-':>9}"
        a_q = f"{astra['psnr']:10.2f}" if astra else f"{'-':>10}"
        f_t = f"{our_fbp['median']:9.2f}" if our_fbp else f"{'':>9}"
        f_ratio = f"{ours['median'] / our_fbp['median']:6.2f}" if our_fbp else f"{'':>6}"
        print(f"{f'{n} x {n_angles} x {slices}':>22} {algorithm + (str(n_iter) if n_iter else ''):>8} "
              f"{ours['median']:8.2f} {a_t} {ratio} {o_it} {a_it} {ours['first']:8.2f} "
              f"{ours['peak_gib']:7.2f}G {a_rss} {ours['psnr']:9.2f} {a_q} {f_t} {f_ratio}",
              flush=True)


if __name__ == "__main__":
    main()
