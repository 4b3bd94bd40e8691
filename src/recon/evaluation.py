"""Reconstruction quality against a known ground truth, and a comparison table of methods.

Metrics are per slice on batches ``(B, 1, H, W)`` (or ``(B, H, W)``), with the data range stated
(PSNR and SSIM depend on it): PSNR ``10 log10(range^2 / MSE)``, SSIM (torchmetrics: Gaussian
window 11, sigma 1.5) and the relative L2 error ``||x - x_true|| / ||x_true||``.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torchmetrics.functional.image import structural_similarity_index_measure

from src.data.io import atomic_output

__all__ = ["compare_methods", "compare_on_held_out", "format_recon_table", "psnr", "recon_metrics",
           "rel_error", "ssim", "write_recon_table"]

Method = Callable[[Tensor], Tensor]

#: table names of the learned models (by their config name)
DISPLAY_NAMES = {"fbpconvnet": "FBPConvNet", "lgd": "LGD", "lpd": "LPD"}


def _b1hw(x: Tensor) -> Tensor:
    if x.dim() == 3:
        x = x[:, None]
    if x.dim() != 4 or x.shape[1] != 1:
        raise ValueError(f"expected images (B, 1, H, W) or (B, H, W), got {tuple(x.shape)}")
    return x.float()


def psnr(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """PSNR in dB per slice ``(B,)`` for ``data_range`` (max - min of the true values)."""
    pred, target = _b1hw(pred), _b1hw(target)
    mse = ((pred - target) ** 2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-20))


def ssim(pred: Tensor, target: Tensor, data_range: float = 1.0) -> Tensor:
    """SSIM per slice ``(B,)`` (Gaussian window 11, sigma 1.5) for ``data_range``."""
    out = structural_similarity_index_measure(
        _b1hw(pred), _b1hw(target), data_range=data_range, reduction="none")
    return out  # type: ignore[return-value]


def rel_error(pred: Tensor, target: Tensor) -> Tensor:
    """Relative L2 error ``||pred - target|| / ||target||`` per slice ``(B,)``."""
    pred, target = _b1hw(pred), _b1hw(target)
    num = torch.linalg.vector_norm((pred - target).flatten(1), dim=1)
    return num / torch.linalg.vector_norm(target.flatten(1), dim=1).clamp_min(1e-20)


def recon_metrics(pred: Tensor, target: Tensor, data_range: float = 1.0) -> dict[str, Tensor]:
    """``{"psnr", "ssim", "rel_error"}``, each ``(B,)``."""
    return {"psnr": psnr(pred, target, data_range), "ssim": ssim(pred, target, data_range),
            "rel_error": rel_error(pred, target)}


@torch.no_grad()
def compare_methods(
    methods: Mapping[str, Method],
    sinograms: Tensor,
    images: Tensor,
    data_range: float = 1.0,
    batch_size: int = 16,
) -> list[dict[str, float | str]]:
    """Run every method on held-out sinograms and score it against the true images.

    Args:
        methods: name -> callable ``(B, 1, A, n_det) -> (B, 1, H, W)``.
        sinograms: ``(N, 1, A, n_det)`` measured line integrals.
        images: ``(N, 1, H, W)`` ground truth.
        data_range: range for PSNR/SSIM.
        batch_size: slices per call.

    Returns:
        One row per method: ``method``, mean ``psnr``/``ssim``/``rel_error`` and their standard
        deviations over slices (``psnr_std``...), ``ms_per_slice``.
    """
    if len(sinograms) != len(images):
        raise ValueError(f"{len(sinograms)} sinograms but {len(images)} images")
    rows: list[dict[str, float | str]] = []
    for name, method in methods.items():
        scores: dict[str, list[Tensor]] = {"psnr": [], "ssim": [], "rel_error": []}
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            pred = method(sinograms[i:i + batch_size])
            for key, value in recon_metrics(pred, images[i:i + batch_size], data_range).items():
                scores[key].append(value.cpu())
        elapsed = time.perf_counter() - start
        row: dict[str, float | str] = {"method": name}
        for key, values in scores.items():
            v = torch.cat(values).double()
            row[key] = float(v.mean())
            row[f"{key}_std"] = float(v.std()) if v.numel() > 1 else 0.0
        row["ms_per_slice"] = 1e3 * elapsed / max(len(images), 1)
        rows.append(row)
    return rows


def format_recon_table(rows: Sequence[Mapping[str, float | str]], reference: str | None = "FBP") -> str:
    """Markdown table of :func:`compare_methods` rows, with the PSNR gain over ``reference``.

    A training-time column is added when rows carry ``train_s``.
    """
    ref = next((r for r in rows if r["method"] == reference), None)
    timed = any("train_s" in r for r in rows)
    head = "| method | PSNR (dB) | SSIM | rel. error | ms/slice |"
    sep = "|---|---:|---:|---:|---:|"
    if ref is not None:
        head += f" dB vs {reference} |"
        sep += "---:|"
    if timed:
        head += " training (s) |"
        sep += "---:|"
    lines = [head, sep]
    for r in rows:
        line = (f"| {r['method']} | {r['psnr']:.2f} ± {r['psnr_std']:.2f} | {r['ssim']:.3f} | "
                f"{r['rel_error']:.3f} | {r['ms_per_slice']:.1f} |")
        if ref is not None:
            line += f" {float(r['psnr']) - float(ref['psnr']):+.2f} |"
        if timed:
            t = float(r.get("train_s", float("nan")))
            line += " - |" if np.isnan(t) else f" {t:.0f} |"
        lines.append(line)
    return "\n".join(lines)


def write_recon_table(rows: Sequence[Mapping[str, float | str]], path: str | Path) -> Path:
    """Write :func:`compare_methods` rows as CSV (parent folders created)."""
    path = Path(path)
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with atomic_output(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float | np.floating) else v)
                             for k, v in r.items()})
    return path


def compare_on_held_out(
    datamodule,
    learned: Mapping[str, torch.nn.Module],
    sirt_iter: int = 100,
    tv_iter: int = 300,
    tv_lams: Sequence[float] = (0.3, 1.0, 3.0, 10.0),
) -> list[dict[str, float | str]]:
    """Compare FBP (ramp, Hann), SIRT, TV (PDHG) and the ``learned`` modules on held-out slices.

    The held-out slices of a :class:`~src.data.sinogram_datamodule.SinogramDataModule`; returns
    rows of :func:`compare_methods`.

    The TV weight is chosen among ``tv_lams`` on 8 training slices (never the held-out ones).
    Learned modules get the datamodule's projector (same geometry, shared weights).
    """
    from src.recon.iterative import operator_norm, sirt, tv_pdhg

    datamodule.setup()
    sino, img = datamodule.held_out()
    op = datamodule.projector
    tr_sino, tr_img = datamodule.train_set.sinograms[:8], datamodule.train_set.images[:8, None]
    norm = operator_norm(op, with_gradient=True, dtype=torch.float32) * 1.01
    scores = [float(psnr(tv_pdhg(tr_sino, op, lam, tv_iter, norm=norm)[:, None], tr_img).mean()) for lam in tv_lams]
    lam = tv_lams[int(np.argmax(scores))]
    methods: dict[str, Method] = {
        "FBP": datamodule.fbp,
        "FBP (Hann)": lambda s: datamodule.fbp(s, "hann"),
        f"SIRT ({sirt_iter} it.)": lambda s: sirt(s[:, 0], op, sirt_iter, nonneg=True)[:, None],
        f"TV (lam {lam:g})": lambda s: tv_pdhg(s[:, 0], op, lam, tv_iter, norm=norm)[:, None],
    }
    for name, module in learned.items():
        module.net.set_projector(op)
        methods[name] = module
    return compare_methods(methods, sino, img, data_range=1.0)
