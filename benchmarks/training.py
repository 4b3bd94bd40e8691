"""Training throughput of the default recipes: samples/s and achieved GFLOP/s per setting.

For each recipe (a ``train.py`` experiment, composed with its real Hydra config) the net, loss,
optimizer, patch side and batch size are the recipe's; one training step is forward, loss,
backward and Adam step on a batch (random grey values, labels from three intensity bands: the
speed does not depend on the numbers). Settings measured side by side in one process:

- ``fp32``: what ``trainer.precision=32-true`` runs;
- ``channels_last``: weights and inputs in ``torch.channels_last`` (``model.channels_last=true``);
- ``bf16``: bf16 autocast (``trainer.precision=bf16-mixed``, Lightning's CPU autocast);
- ``bf16+channels_last``: both.

FLOPs per sample come from ``torch.utils.flop_counter`` (forward and backward, one batch), so
GFLOP/s = FLOPs per sample × samples/s. ``--loader`` also times the recipe's DataLoader alone
(its files must exist: ``make data`` or one training run) with ``num_workers`` 0 and 1: when the
loader alone is many times faster than the step, a worker cannot help on 2 cores (it would take
a core from the compute). On a CUDA machine the settings run on the GPU too.

    python benchmarks/training.py --recipes synthetic_lrcsnet synthetic_generalist --steps 8
    python benchmarks/training.py --recipes synthetic_lrcsnet --loader --threads 2
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SETTINGS = {"fp32": (False, False), "channels_last": (False, True), "bf16": (True, False),
            "bf16+channels_last": (True, True)}


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def compose(recipe: str, overrides: list[str]):
    """The resolved training config of ``experiment=<recipe>`` (``default``: no experiment)."""
    from src.config import compose_config, setup_config_env

    setup_config_env()
    extra = [] if recipe == "default" else [f"experiment={recipe}"]
    return compose_config("train", extra + ["logger=none", *overrides])


def make_batch(cfg, device: str):
    import torch

    gen = torch.Generator().manual_seed(0)
    side, batch = int(cfg.data.patch_size), int(cfg.data.batch_size)
    x = torch.rand(batch, 1, side, side, generator=gen)
    y = torch.bucketize(x, torch.tensor([0.33, 0.66])).long()
    return x.to(device), y.to(device)


def step_rate(cfg, device: str, bf16: bool, channels_last: bool, steps: int, warmup: int) -> dict:
    """Median samples/s of training steps and FLOPs per sample of one setting."""
    import torch
    from hydra.utils import instantiate
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    module = instantiate(cfg.model, _recursive_=False, channels_last=channels_last).to(device)
    opt = torch.optim.Adam(module.parameters(), lr=1e-3)
    x, y = make_batch(cfg, device)
    dev_type = "cuda" if device.startswith("cuda") else "cpu"

    def one_step() -> None:
        with torch.autocast(dev_type, dtype=torch.bfloat16, enabled=bf16):
            loss = module.loss_fn(module(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with FlopCounterMode(display=False) as counter:
        one_step()
    flops = counter.get_total_flops() / len(x)
    for _ in range(warmup):
        one_step()
    times = []
    for _ in range(steps):
        if dev_type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        one_step()
        if dev_type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    rate = len(x) / statistics.median(times)
    return {"samples_s": rate, "gflop_s": flops * rate / 1e9, "flops_per_sample": flops}


def loader_rate(cfg, workers: int, batches: int) -> float:
    """Samples/s of the recipe's training DataLoader alone (``num_workers=workers``)."""
    from hydra.utils import instantiate

    dm = instantiate(cfg.data, num_workers=workers, prepare=None)
    dm.setup("fit")
    loader = dm.train_dataloader()
    it = iter(loader)
    next(it)  # worker start-up and first batch not timed
    start, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(it)["image"])
    return n / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["synthetic_lrcsnet", "synthetic_generalist"],
                        help="experiment names (conf/experiment/), or 'default' for train.py's defaults")
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    parser.add_argument("--steps", type=int, default=8, help="timed steps per setting (median)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (2 cores here)")
    parser.add_argument("--loader", action="store_true", help="also time the DataLoader alone")
    parser.add_argument("--loader-batches", type=int, default=20)
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every recipe (key=value)")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    names = [cpu_name()] + ([torch.cuda.get_device_name(0)] if torch.cuda.is_available() else [])
    print(f"machine: {' + '.join(names)}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{args.threads} threads; load average {os.getloadavg()[0]:.2f}")
    print(f"{'recipe':24s} {'device':6s} {'setting':20s} {'batch':>9s} {'samples/s':>10s} "
          f"{'GFLOP/s':>8s} {'× fp32':>7s}")
    for recipe in args.recipes:
        cfg = compose(recipe, args.overrides)
        shape = f"{cfg.data.batch_size}×{cfg.data.patch_size}²"
        for device in devices:
            rows = {name: step_rate(cfg, device, *SETTINGS[name], args.steps, args.warmup)
                    for name in args.settings}
            base = rows["fp32"]["samples_s"] if "fp32" in rows else None
            for name, r in rows.items():
                ratio = f"{r['samples_s'] / base:.2f}" if base else "-"
                print(f"{recipe:24s} {device:6s} {name:20s} {shape:>9s} {r['samples_s']:10.1f} "
                      f"{r['gflop_s']:8.1f} {ratio:>7s}", flush=True)
            print(f"{'':24s} {device:6s} (FLOPs per sample: {r['flops_per_sample'] / 1e9:.2f} GFLOP, "
                  "forward + backward)")
        if args.loader:
            for workers in (0, 1):
                try:
                    rate = loader_rate(cfg, workers, args.loader_batches)
                except (FileNotFoundError, ValueError) as err:
                    print(f"{recipe:24s} loader skipped: {err}")
                    break
                print(f"{recipe:24s} {'cpu':6s} {f'loader, {workers} workers':20s} {shape:>9s} {rate:10.1f}",
                      flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
