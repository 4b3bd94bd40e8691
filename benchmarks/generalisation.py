"""Zero-shot segmentation on data unlike the training data: every model × test domain.

Domains (none is used for training or for choosing a model):

- ``real``: all ten shared real NMC slices (``../shared/data/segmentpy-nmc``, Zernike TXM,
  labels 0 = NMC, 1 = CBD, 2 = pore);
- ``<geometry>/<setting>``: the shared electrode geometries (``electrode-volumes/``: taufactor's
  and MATBOX's label volumes; a centred crop) imaged by our TXM model with settings outside the
  training ranges of ``data=synthetic_randomized`` (``OUTSIDE`` below: fewer photons and angles,
  more blur, a stronger halo, stronger rings, more cupping, a larger gamma, CBD brighter than NMC);
- ``seeds``: our own held-out randomised volumes (``test_s*`` of ``data/synthetic_randomized``)
  and the plain simulator's held-out volume (``data/synthetic/test_s100``) when present.

Methods: each ``--ckpt NAME=PATH`` (2D segmentation checkpoints, sliding window), 3-class
multi-Otsu, and a random forest trained on the real labels (on ``real``: leave one volume out,
i.e. trained on the slices of the two other volumes; elsewhere: trained on all ten slices).
3D volumes are scored on ``--max-slices`` evenly spaced z slices (the
same for every method; the volume is imaged whole, then sliced). Prints per-domain mIoU and per-phase IoU, writes ``results.json``, ``results.md`` and
``panels.png`` (grey / truth / each method on one slice of each domain) to ``--out``.

    python benchmarks/generalisation.py --ckpt generalist=logs/pretrain/synthetic_generalist/checkpoints/best.ckpt --out logs/generalisation
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CLASSES = ["NMC", "CBD", "pore"]
#: shared label volumes: file → {stored value: our label}
GEOMETRIES = {
    "taufactor": ("taufactor_electrode.tiff", {0: 2, 85: 0, 170: 1}),
    "matbox": ("matbox_nmc_cbd_bridge.tif", {0: 2, 1: 0, 2: 1}),
}
#: imaging settings outside the ranges of conf/data/synthetic_randomized.yaml (given there in brackets)
OUTSIDE = {
    # photons [1e2, 1e5], n_angles [45, 361], blur [0, 2], ring [0, 0.02]
    "lowdose": {"photons": 80.0, "n_angles": 40, "detector_blur_px": 2.2, "ring_strength": 0.025},
    # halo [-1.5, 2], cupping [0, 0.3], gamma [0.6, 1.7], field [0, 0.25]; CBD contrast [-0.3, 1.3]
    "artefacts": {"halo_strength": 2.3, "halo_sigma_px": 4.0, "cupping": 0.35, "gamma": 1.9,
                  "field_strength": 0.3, "field_sigma_px": 24.0, "photons": 3000.0,
                  "attenuation": (0.02, 0.027, 0.002)},  # CBD brighter than NMC: contrast 1.39
}


def real_domain(shared: Path) -> list[dict]:
    from src.data.io import read_image

    folder = shared / "segmentpy-nmc"
    items = []
    for label_path in sorted(folder.glob("*_label.tif"), key=lambda p: int(p.name.split("_")[0])):
        name = label_path.name.split("_")[0]
        image = np.asarray(read_image(folder / f"{name}.tif"), np.float32)
        items.append({"domain": "real", "name": name, "image": image,
                      "label": np.asarray(read_image(label_path), np.uint8), "group": image.shape})
    return items


def geometry_domains(shared: Path, crop: tuple[int, int, int], cache: Path) -> list[dict]:
    from src.data.io import read_image, write_tiff
    from src.simulation.imaging import ImagingConfig, simulate_tomography

    items = []
    for geo, (fname, lut) in GEOMETRIES.items():
        raw = np.asarray(read_image(shared / "electrode-volumes" / fname))
        start = [(s - c) // 2 for s, c in zip(raw.shape, crop, strict=True)]
        raw = raw[tuple(slice(a, a + c) for a, c in zip(start, crop, strict=True))]
        label = np.full(raw.shape, 255, np.uint8)
        for value, ours in lut.items():
            label[raw == value] = ours
        if (label == 255).any():
            raise ValueError(f"{fname}: values {np.unique(raw[label == 255])[:5]} are not in {sorted(lut)}")
        for setting, params in OUTSIDE.items():
            path = cache / f"{geo}_{setting}_{'x'.join(map(str, crop))}.tif"
            if path.exists():
                image = np.asarray(read_image(path), np.float32)
            else:
                image = simulate_tomography(label, ImagingConfig(**params), seed=7)
                write_tiff(path, image)
            items.append({"domain": f"{geo}/{setting}", "name": geo, "image": image, "label": label})
    return items


def seed_domains(data_dir: Path) -> list[dict]:
    from src.data.io import read_image

    items = []
    for sub, domain in (("synthetic_randomized", "seeds/randomised"), ("synthetic", "seeds/plain")):
        for image_path in sorted((data_dir / sub).glob("test_s*_image.tif")):
            label_path = image_path.with_name(image_path.name.replace("_image", "_label"))
            items.append({"domain": domain, "name": image_path.name.split("_image")[0],
                          "image": np.asarray(read_image(image_path), np.float32),
                          "label": np.asarray(read_image(label_path), np.uint8)})
    return items


def model_method(path: str):
    from src.inference.evaluation import WindowSettings, model_segmenter

    seg = model_segmenter(path, "cpu", WindowSettings(), progress=False)
    return lambda image, item: seg.predict(image, None), seg.normalize


def forest_method(real: list[dict], normalize: dict):
    from src.analysis.segmenters import RandomForestSegmenter
    from src.data.transforms import normalize_percentile

    def fit(items):
        return RandomForestSegmenter(n_estimators=100, max_depth=20, samples_per_class=4000, seed=0).fit(
            [normalize_percentile(it["image"], **normalize) for it in items], [it["label"] for it in items])

    everything = fit(real)
    per_group = {g: fit([it for it in real if it["group"] != g]) for g in {it["group"] for it in real}}

    def predict(image, item):
        forest = per_group[item["group"]] if item["domain"] == "real" else everything
        return forest.predict(image)

    return predict


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", nargs="*", default=[], metavar="NAME=PATH", help="segmentation checkpoints")
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "data")
    parser.add_argument("--crop", type=int, nargs=3, default=[48, 128, 128], metavar=("Z", "Y", "X"))
    parser.add_argument("--max-slices", type=int, default=16,
                        help="z slices scored per 3D volume (evenly spaced, the same for every method)")
    parser.add_argument("--no-forest", action="store_true", help="skip the random forest (slowest baseline)")
    parser.add_argument("--out", type=Path, default=ROOT / "logs" / "generalisation")
    args = parser.parse_args(argv)

    import torch

    from src.analysis.metrics import confusion_matrix, scores_from_confusion
    from src.analysis.segmenters import MultiOtsuSegmenter
    from src.data.io import write_json
    from src.data.transforms import DEFAULT_NORMALIZE, normalize_percentile

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    args.out.mkdir(parents=True, exist_ok=True)
    if not (args.shared / "segmentpy-nmc").is_dir():
        raise SystemExit(f"reference data not found at {args.shared} (expected segmentpy-nmc/ and electrode-volumes/)")
    t0 = time.perf_counter()
    real = real_domain(args.shared)
    items = real + geometry_domains(args.shared, tuple(args.crop), args.out) + seed_domains(args.data_dir)
    for it in items:  # 2D nets and the baselines segment slice by slice: score a subset of z
        if it["image"].ndim == 3 and it["image"].shape[0] > args.max_slices:
            keep = np.linspace(0, it["image"].shape[0] - 1, args.max_slices).round().astype(int)
            it["image"], it["label"] = it["image"][keep], it["label"][keep]
    print(f"domains ready in {time.perf_counter() - t0:.0f} s: "
          f"{sorted({it['domain'] for it in items})}; load average {os.getloadavg()[0]:.2f}", flush=True)
    methods: dict[str, tuple] = {}
    for spec in args.ckpt:
        name, _, path = spec.partition("=")
        if not path or not Path(path).is_file():
            raise SystemExit(f"--ckpt {spec!r}: expected NAME=PATH of an existing checkpoint")
        methods[name] = model_method(path)
    otsu = MultiOtsuSegmenter(CLASSES, ("pore", "CBD", "NMC"), sigma=1.0)
    methods["multi-Otsu"] = (lambda image, item: otsu.predict(image), dict(DEFAULT_NORMALIZE))
    if not args.no_forest:
        methods["forest (real labels)"] = (forest_method(real, dict(DEFAULT_NORMALIZE)), dict(DEFAULT_NORMALIZE))
    domains = list(dict.fromkeys(it["domain"] for it in items))
    results: dict[str, dict] = {}
    panels: dict[str, dict] = {}
    for mname, (predict, normalize) in methods.items():
        t = time.perf_counter()
        cms = {d: np.zeros((3, 3), np.int64) for d in domains}
        for it in items:
            pred = predict(normalize_percentile(it["image"], **normalize), it)
            cms[it["domain"]] += confusion_matrix(pred, it["label"], 3)
            if it["domain"] not in panels.get(mname, {}):
                panels.setdefault(mname, {})[it["domain"]] = pred[pred.shape[0] // 2] if pred.ndim == 3 else pred
        results[mname] = {}
        for d in domains:
            s = scores_from_confusion(cms[d], CLASSES)
            results[mname][d] = {"miou": s["miou"], "accuracy": s["accuracy"], "iou": s["iou"]}
        print(f"{mname}: {time.perf_counter() - t:.0f} s", flush=True)
    lines = ["| method | domain | mIoU | IoU NMC | IoU CBD | IoU pore | accuracy |", "|---|---|---|---|---|---|---|"]
    for mname, per in results.items():
        for d, s in per.items():
            lines.append(f"| {mname} | {d} | {s['miou']:.3f} | {s['iou']['NMC']:.3f} | {s['iou']['CBD']:.3f} | "
                         f"{s['iou']['pore']:.3f} | {s['accuracy']:.3f} |")
    table = "\n".join(lines)
    print(table)
    (args.out / "results.md").write_text(table + "\n")
    write_json(args.out / "results.json", {"results": results, "outside_settings": OUTSIDE,
                                           "crop": args.crop, "load_average": os.getloadavg()[0]})
    write_panels(items, panels, domains, args.out / "panels.png")
    print(f"wrote {args.out}/results.md, results.json, panels.png in {time.perf_counter() - t0:.0f} s; "
          f"load average {os.getloadavg()[0]:.2f}")


def write_panels(items: list[dict], panels: dict, domains: list[str], path: Path) -> None:
    """grey | truth | each method, one row per domain (its first item's middle slice)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    cmap = ListedColormap(["#1f77b4", "#ff7f0e", "#000000"])  # NMC blue, CBD orange, pore black
    first = {d: next(it for it in items if it["domain"] == d) for d in domains}
    cols = ["grey", "truth", *panels]
    fig, axes = plt.subplots(len(domains), len(cols), figsize=(2.2 * len(cols), 2.2 * len(domains)), squeeze=False)
    for r, d in enumerate(domains):
        it = first[d]
        grey = it["image"][it["image"].shape[0] // 2] if it["image"].ndim == 3 else it["image"]
        truth = it["label"][it["label"].shape[0] // 2] if it["label"].ndim == 3 else it["label"]
        for c, col in enumerate(cols):
            ax = axes[r, c]
            if col == "grey":
                ax.imshow(grey, cmap="gray", vmin=np.percentile(grey, 0.5), vmax=np.percentile(grey, 99.5))
            else:
                ax.imshow(truth if col == "truth" else panels[col][d], cmap=cmap, vmin=0, vmax=2, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(col, fontsize=8)
            if c == 0:
                ax.set_ylabel(f"{d}\n{it['name']}", fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=60)
    plt.close(fig)
    tmp.replace(path)


if __name__ == "__main__":
    main()
