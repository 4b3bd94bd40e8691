"""Learned versus classical reconstruction on held-out simulated slices, printed as a table.

Trains FBPConvNet, LGD and LPD through ``train.py`` (same data, same budget each, or takes
checkpoints), then scores FBP, SIRT, TV (PDHG) and the three nets on the held-out slices of
``data=sinograms`` (electrode slices by default) with PSNR / SSIM (data range 1) and relative
error; writes ``<out>/recon_learned.csv`` and ``.md``.

    python benchmarks/recon_learned.py --minutes 2 --n-angles 60 --photons 1e4
    python benchmarks/recon_learned.py --minutes 6 --model-override lpd:model.net.init=fbp \
        lpd:model.net.zero_updates=true --override model.optimizer.lr=2e-3 model.scheduler=null
    python benchmarks/recon_learned.py --ckpt lpd=RUN/checkpoints/best.ckpt --budget lpd=380
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch
from hydra.utils import instantiate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src.config import compose_config, setup_config_env  # noqa: E402
from src.data.sinogram_datamodule import SinogramDataModule  # noqa: E402
from src.models.checkpoint import load_reconstruction_checkpoint  # noqa: E402
from src.recon.evaluation import (  # noqa: E402
    DISPLAY_NAMES,
    compare_on_held_out,
    format_recon_table,
    write_recon_table,
)

NAMES = DISPLAY_NAMES


def data_overrides(a: argparse.Namespace) -> list[str]:
    photons = "null" if a.photons is None else repr(a.photons)
    return ["data=sinograms", f"data.image_size={a.image_size}", f"data.n_angles={a.n_angles}",
            f"data.photons={photons}", f"data.train_samples={a.train_samples}",
            f"data.val_samples={a.val_samples}", f"data.val_ellipse_fraction={a.val_ellipse_fraction}",
            f"data.batch_size={a.batch_size}", f"seed={a.seed}"]


def train_model(model: str, a: argparse.Namespace, out: Path) -> tuple[Path, float]:
    """Fit ``model`` through train.py for ``a.minutes``; return (best checkpoint, seconds)."""
    import train

    run_dir = out / model
    seconds = int(a.minutes * 60)
    overrides = [f"model={model}", "logger=csv", "callbacks=reconstruction", *data_overrides(a),
                 f"trainer.max_epochs={a.epochs}",
                 f"trainer.max_time=00:00:{seconds // 60:02d}:{seconds % 60:02d}",
                 "callbacks.early_stopping=null", "trainer.enable_model_summary=false",
                 f"paths.output_dir={run_dir}", f"paths.log_dir={run_dir}/logs", *a.override,
                 *a.model_override.get(model, [])]
    start = time.perf_counter()
    train.train(compose_config("train", overrides))
    return run_dir / "checkpoints" / "best.ckpt", time.perf_counter() - start


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["fbpconvnet", "lgd", "lpd"], choices=list(NAMES))
    p.add_argument("--ckpt", nargs="*", default=[],
                   help="LABEL=PATH: evaluate these checkpoints instead of training (label: a "
                        "model name or any row name)")
    p.add_argument("--budget", nargs="*", default=[],
                   help="LABEL=SECONDS: training time of a --ckpt, for the table")
    p.add_argument("--minutes", type=float, default=2.0, help="training time per model")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--n-angles", type=int, default=60)
    p.add_argument("--photons", type=float, default=1e4, help="<= 0: noiseless")
    p.add_argument("--train-samples", type=int, default=512)
    p.add_argument("--val-samples", type=int, default=32)
    p.add_argument("--val-ellipse-fraction", type=float, default=0.0)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sirt-iter", type=int, default=100)
    p.add_argument("--tv-iter", type=int, default=300)
    p.add_argument("--override", nargs="*", default=[], help="extra train.py overrides")
    p.add_argument("--model-override", nargs="*", default=[], metavar="MODEL:OVERRIDE",
                   help="train.py override for one model, e.g. lpd:model.net.zero_updates=true")
    p.add_argument("--out", type=Path, default=ROOT / "logs" / "benchmarks" / "recon_learned")
    a = p.parse_args()
    a.photons = None if a.photons is not None and a.photons <= 0 else a.photons
    per_model: dict[str, list[str]] = {}
    for spec in a.model_override:
        model, sep, override = spec.partition(":")
        if not sep or model not in NAMES:
            p.error(f"--model-override {spec!r}: expected MODEL:OVERRIDE with MODEL one of {list(NAMES)}")
        per_model.setdefault(model, []).append(override)
    a.model_override = per_model
    setup_config_env()
    os.environ.setdefault("WANDB_MODE", "offline")
    a.out.mkdir(parents=True, exist_ok=True)

    given = {k: float(v) for k, v in (s.split("=", 1) for s in a.budget)}
    trained: dict[str, tuple[Path, float | None]] = {}
    if a.ckpt:
        for label, path in (s.split("=", 1) for s in a.ckpt):
            trained[label] = (Path(path), given.get(label))
    else:
        for model in a.models:
            trained[model] = train_model(model, a, a.out)
            print(f"trained {model} in {trained[model][1]:.0f} s")

    cfg = compose_config("train", ["model=lpd", *data_overrides(a)])
    dm: SinogramDataModule = instantiate(cfg.data)
    learned, budget = {}, {}
    for label, (path, seconds) in trained.items():
        learned[NAMES.get(label, label)] = load_reconstruction_checkpoint(path)[0]
        budget[NAMES.get(label, label)] = seconds
    rows = compare_on_held_out(dm, learned, a.sirt_iter, a.tv_iter)
    for r in rows:
        seconds = budget.get(str(r["method"]))
        r["train_s"] = float("nan") if seconds is None else seconds
    table = format_recon_table(rows)
    photons = "noiseless" if a.photons is None else f"{a.photons:g} photons"
    head = (f"held-out: {a.val_samples} slices {a.image_size}^2 (ellipse fraction "
            f"{a.val_ellipse_fraction}), {a.n_angles} angles, {photons}; training "
            f"{a.train_samples} slices; training time per net in the last column "
            f"(evaluation on {torch.get_num_threads()} CPU thread(s))")
    print(head)
    print(table)
    write_recon_table(rows, a.out / "recon_learned.csv")
    (a.out / "recon_learned.md").write_text(head + "\n\n" + table + "\n")
    print(f"wrote {a.out / 'recon_learned.csv'}")


if __name__ == "__main__":
    main()
