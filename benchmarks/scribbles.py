"""Segment a new volume from a few scribbles: trained model, forest, adapted CNN, second round.

The held-out volume is the one the trained model never saw. Scribbles are drawn
programmatically (strokes along the eroded class regions, ``--fraction`` of the pixels, equal
per class) on ``--scribble`` slices of it and scored on its other slices (``--test``):

1. the trained model before adaptation (``--base CKPT``, or trained here with
   ``experiment=segmentpy_nmc`` on ``--base-train`` for ``--base-time``);
2. a random forest fitted on the same scribbles;
3. the CNN adapted to the scribbles (``train.py experiment=adapt_scribbles init_from=BASE``);
4. round 2: ``evaluate.py save_uncertainty=true tta=true`` on the scribbled slices ranks 64²
   regions by predictive entropy ("label here next"); new strokes are drawn in the top
   ``--regions`` regions of each slice (``--fraction2`` of the pixels) and the adapted CNN is
   fine-tuned again on both rounds; the same with as many *random* regions is the control.

``--self-train`` adds self-training: the adapted CNN (TTA) and the forest both label the
scribbled slices and the grey of the scored ones (transductive: their labels are never read);
pixels where the two agree and the CNN is at least 0.9 sure become pseudo-labels (the scribbles
stay as drawn), and the adapted CNN is fine-tuned once more on them.

``--ceiling`` adds what the same two slices give with their *dense* labels (the forest and the
adapted CNN), the ceiling that scribbles on them can approach. ``--simulate`` replaces the
shared slices by slices of a simulated electrode imaged with settings the plain simulator's
nets never saw (:data:`SHIFTED`), where the labels follow one rule everywhere.

Every CNN run goes through ``train.py`` / ``evaluate.py`` (subprocesses), so what is measured
is what a user runs; adaptation times are wall-clock seconds of the whole ``train.py`` call.

    python benchmarks/scribbles.py --data-dir ../shared/data/segmentpy-nmc \\
        --base-train 1,200,400,103,510,929,1098 --scribble 394,546 --test 698 --ceiling --out logs/scribbles
    python benchmarks/scribbles.py --simulate --base logs/train/synthetic_lrcsnet/checkpoints/best.ckpt \\
        --scribble 8,40 --test 24,56,72,88 --replay-weight 0 --ceiling --out logs/scribbles_sim

Writes ``scribbles.csv``, ``scribbles.md`` and ``scribbles.json`` into ``--out`` and prints
the table. Finished runs are reused (delete their folder to redo them).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from src.analysis.metrics import confusion_matrix, scores_from_confusion
from src.analysis.segmenters import RandomForestSegmenter
from src.data.io import read_image, write_json, write_text, write_tiff
from src.data.transforms import DEFAULT_NORMALIZE, normalize_percentile
from src.simulation.scribbles import (
    UNLABELLED,
    draw_scribbles,
    labelled_fraction,
    regions_mask,
    to_napari_labels,
)

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["NMC", "CBD", "pore"]
#: ``--simulate``: a new electrode (seed 500) imaged unlike the plain simulator's training data
#: (fewer photons, stronger blur and halo, CBD nearer NMC's grey, a smooth field and gamma)
SHIFTED = {"photons": 2000.0, "detector_blur_px": 1.5, "halo_strength": 1.6, "halo_sigma_px": 4.0,
           "attenuation": (0.02, 0.011, 0.001), "field_strength": 0.15, "field_sigma_px": 40.0, "gamma": 1.3}
SIM_SHAPE = (96, 256, 256)


def simulated_slices(folder: Path) -> Path:
    """Write the z slices of a simulated, :data:`SHIFTED`-imaged electrode as ``z.tif`` /
    ``z_label.tif`` into ``folder`` (reused when present); returns the folder."""
    from src.simulation.electrode_volumes import make_synthetic_volume
    from src.simulation.imaging import ImagingConfig
    from src.simulation.microstructure import MicrostructureConfig

    if (folder / "done").is_file():
        return folder
    paths = make_synthetic_volume(folder / "volume", 500, MicrostructureConfig(shape=SIM_SHAPE),
                                  ImagingConfig(**SHIFTED), name="shifted_seed500")
    image, label = read_image(paths["image"]), read_image(paths["label"])
    for z in range(image.shape[0]):
        write_tiff(folder / f"{z}.tif", np.asarray(image[z], np.float32))
        write_tiff(folder / f"{z}_label.tif", np.asarray(label[z], np.uint8))
    write_text(folder / "done", "")
    return folder


def run(args: list[str], log: Path) -> float:
    """Run ``python <args>`` in the repo root (output to ``log``); wall seconds; fail loudly."""
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(log, "w") as fh:
        code = subprocess.call([sys.executable, *args], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"{' '.join(args[:2])} failed (exit {code}); see {log}")
    return time.perf_counter() - start


def hydra_list(paths: list[Path]) -> str:
    return "[" + ",".join(str(p) for p in paths) + "]"


def evaluate(out: Path, ckpt: Path, images: list[Path], labels: list[Path], extra: list[str] = ()) -> dict:
    """evaluate.py (cached in ``out/metrics.json``); returns the report."""
    metrics = out / "metrics.json"
    if not metrics.is_file():
        run(["evaluate.py", f"ckpt_path={ckpt}", f"images={hydra_list(images)}", f"labels={hydra_list(labels)}",
             f"output_dir={out}", "progress=false", "panels=false", *extra], out.with_suffix(".log"))
    return json.loads(metrics.read_text())


def adapt(out: Path, init: Path, images: list[Path], scribbles: list[Path], extra: list[str]) -> tuple[Path, float]:
    """train.py experiment=adapt_scribbles (cached); the last checkpoint and the wall seconds."""
    ckpt = out / "checkpoints" / "last.ckpt"
    timing = out / "seconds.json"
    if not (ckpt.is_file() and timing.is_file()):
        seconds = run(["train.py", "experiment=adapt_scribbles", f"init_from={init}",
                       f"data.images={hydra_list(images)}", f"data.labels={hydra_list(scribbles)}",
                       "logger=csv", f"hydra.run.dir={out}", *extra], out.parent / f"{out.name}.log")
        write_json(timing, {"seconds": seconds})
    return ckpt, json.loads(timing.read_text())["seconds"]


def fit_curve(run_dir: Path) -> list[float]:
    """val/miou on the scribbled pixels after each epoch of an adaptation run (its CSV log)."""
    path = run_dir / "csv" / "metrics.csv"
    if not path.is_file():
        return []
    with open(path) as fh:
        return [round(float(r["val/miou"]), 3) for r in csv.DictReader(fh) if r.get("val/miou")]


def scores(report: dict) -> dict:
    o = report["overall"]
    return {"miou": o["miou"], "accuracy": o["accuracy"], **{f"iou_{c}": o["iou"][c] for c in CLASSES}}


def forest_scores(images: list[Path], scribbles: list[np.ndarray], test: list[Path], labels: list[Path]
                  ) -> tuple[dict, float, RandomForestSegmenter]:
    """Random forest fitted on the scribbled pixels, scored on the test slices; seconds to fit; the forest."""
    norm = DEFAULT_NORMALIZE
    start = time.perf_counter()
    forest = RandomForestSegmenter(seed=0).fit(
        [normalize_percentile(read_image(p), norm["lower"], norm["upper"]) for p in images], scribbles)
    seconds = time.perf_counter() - start
    cm = np.zeros((3, 3), np.int64)
    for img, lab in zip(test, labels, strict=True):
        pred = forest.predict(normalize_percentile(read_image(img), norm["lower"], norm["upper"]))
        cm += confusion_matrix(pred, read_image(lab), 3)
    s = scores_from_confusion(cm, CLASSES)
    return {"miou": s["miou"], "accuracy": s["accuracy"], **{f"iou_{c}": s["iou"][c] for c in CLASSES}}, seconds, forest


def agreed_pseudo_labels(ckpt: Path, forest: RandomForestSegmenter, images: list[Path],
                         scribbles: dict[str, np.ndarray], confidence: float = 0.9) -> list[np.ndarray]:
    """Pseudo-labels (``UNLABELLED`` where none) of ``images`` for self-training.

    A pixel is labelled where the CNN's TTA prediction and the forest's agree and the CNN's top
    probability is at least ``confidence``; scribbled pixels (``scribbles[image stem]``, same
    convention) keep their scribble.
    """
    from src.inference.evaluation import WindowSettings, model_segmenter

    seg = model_segmenter(ckpt, "cpu", WindowSettings(tta=True), progress=False)
    norm = DEFAULT_NORMALIZE
    out, got = [], []
    for path in images:
        raw = read_image(path)
        got.clear()
        pred = seg.predict(normalize_percentile(raw, **seg.normalize), lambda _, probs: got.append(np.asarray(probs)))
        sure = got[0].reshape(-1, *raw.shape).max(0) >= confidence
        agree = forest.predict(normalize_percentile(raw, norm["lower"], norm["upper"])) == pred
        lab = np.where(sure & agree, pred, UNLABELLED).astype(np.uint8)
        if path.stem in scribbles:
            lab = np.where(scribbles[path.stem] != UNLABELLED, scribbles[path.stem], lab).astype(np.uint8)
        out.append(lab)
    return out


def write_scribbles(folder: Path, names: list[str], scribbles: list[np.ndarray]) -> list[Path]:
    """Scribbles as napari/ilastik label files (0 = unlabelled, 1..3) named ``N_label.tif``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, s in zip(names, scribbles, strict=True):
        write_tiff(folder / f"{name}_label.tif", to_napari_labels(s))
        paths.append(folder / f"{name}_label.tif")
    return paths


def second_round(truth: np.ndarray, first: np.ndarray, regions: list[dict], fraction: float, seed: int) -> np.ndarray:
    """First-round scribbles plus strokes inside ``regions`` (``fraction`` of the image's pixels)."""
    mask = regions_mask(truth.shape, regions)
    extra = draw_scribbles(truth, min(1.0, fraction * truth.size / max(1, mask.sum())), 3, seed=seed, within=mask)
    both = first.copy()
    new = (extra != UNLABELLED) & (first == UNLABELLED)
    both[new] = extra[new]
    return both


def random_regions(shape: tuple[int, int], n: int, side: int, rng: np.random.Generator) -> list[dict]:
    """``n`` distinct grid squares of ``side`` drawn uniformly (the control of round 2)."""
    cells = [(y, x) for y in range(0, shape[0] - side + 1, side) for x in range(0, shape[1] - side + 1, side)]
    pick = rng.choice(len(cells), n, replace=False)
    return [{"y0": cells[i][0], "y1": cells[i][0] + side, "x0": cells[i][1], "x1": cells[i][1] + side} for i in pick]


def write_outputs(out: Path, rows: list[dict], base: Path, scrib_names: list[str], test_names: list[str],
                  overrides: list[str], final: bool = False) -> None:
    """``scribbles.csv``/``.md``/``.json`` with the rows so far (written after every row, so an
    interrupted study keeps what it measured); the table and fit curves printed at the end."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "scribbles.csv", buf.getvalue())
    header = "| method | scribbled % | seconds | mIoU | accuracy | IoU NMC | IoU CBD | IoU pore |\n|---|---|---|---|---|---|---|---|\n"
    table = header + "".join(
        f"| {r['method']} | {r['scribbled_pct']:.2f} | {r['seconds']:.0f} | {r['miou']:.3f} | {r['accuracy']:.3f} | "
        f"{r['iou_NMC']:.3f} | {r['iou_CBD']:.3f} | {r['iou_pore']:.3f} |\n" for r in rows)
    write_text(out / "scribbles.md", table)
    curves = {p.name: fit_curve(p) for p in sorted(out.glob("adapt_*")) if p.is_dir()}
    write_json(out / "scribbles.json", {"base": str(base), "scribble": scrib_names, "test": test_names,
                                        "rows": rows, "adapt_overrides": overrides,
                                        "val_miou_on_scribbles_per_epoch": curves})
    if not final:
        return
    print(table)
    for name, curve in curves.items():
        print(f"{name}: val/miou on the scribbled pixels per epoch {curve}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "segmentpy-nmc")
    p.add_argument("--base", type=Path, default=None, help="trained checkpoint (default: train one here)")
    p.add_argument("--base-train", default="1,200,103,510,929", help="slices the base model trains on")
    p.add_argument("--base-time", default="00:00:06:00", help="trainer.max_time of the base training")
    p.add_argument("--scribble", default="394,546", help="slices of the held-out volume that get scribbles")
    p.add_argument("--test", default="698", help="slices of the held-out volume that are scored")
    p.add_argument("--fraction", type=float, default=0.03, help="round 1: share of pixels scribbled per slice")
    p.add_argument("--fraction2", type=float, default=0.015, help="round 2: share of pixels added per slice")
    p.add_argument("--regions", type=int, default=6, help="round 2: top regions (64²) per slice")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--adapt", nargs="*", default=[], help="extra overrides of the adaptation runs")
    p.add_argument("--replay-weight", type=float, default=0.3,
                   help="an extra row: round 1 with the base training slices replayed (this share of patches; 0: no row)")
    p.add_argument("--self-train", action="store_true",
                   help="an extra row: round 1, then self-training on pseudo-labels where the CNN and the forest agree")
    p.add_argument("--ceiling", action="store_true",
                   help="extra rows: the forest and the adapted CNN on the dense labels of the scribbled slices")
    p.add_argument("--simulate", action="store_true",
                   help="slices of a simulated electrode imaged with SHIFTED settings instead of --data-dir")
    p.add_argument("--out", type=Path, default=ROOT / "logs" / "scribbles")
    args = p.parse_args()

    d = simulated_slices(args.out.resolve() / "data") if args.simulate else args.data_dir
    if not d.is_dir():
        raise SystemExit(f"--data-dir {d} does not exist (the shared SegmentPy slices)")
    out = args.out.resolve()
    scrib_names, test_names = args.scribble.split(","), args.test.split(",")
    scrib_images = [d / f"{n}.tif" for n in scrib_names]
    test_images, test_labels = [d / f"{n}.tif" for n in test_names], [d / f"{n}_label.tif" for n in test_names]
    base = args.base
    rows: list[dict] = []

    def add(row: dict) -> None:
        rows.append(row)
        write_outputs(out, rows, base, scrib_names, test_names, args.adapt)
    if base is None:
        base = out / "base" / "checkpoints" / "best.ckpt"
        if not base.is_file():
            images = hydra_list([d / f"{n}.tif" for n in args.base_train.split(",")])
            run(["train.py", "experiment=segmentpy_nmc", f"data.images={images}", f"trainer.max_time={args.base_time}",
                 "logger=csv", f"hydra.run.dir={out / 'base'}"], out / "base.log")
    add({"method": "trained model, no adaptation", "scribbled_pct": 0.0, "seconds": 0.0,
                 **scores(evaluate(out / "eval_base", base, test_images, test_labels))})

    truths = [read_image(d / f"{n}_label.tif") for n in scrib_names]
    first = [draw_scribbles(t, args.fraction, 3, seed=args.seed + i) for i, t in enumerate(truths)]
    pct1 = 100 * float(np.mean([labelled_fraction(s) for s in first]))
    round1 = write_scribbles(out / "scribbles_round1", scrib_names, first)

    forest, forest_s, forest_model = forest_scores(scrib_images, first, test_images, test_labels)
    add({"method": "random forest on the scribbles", "scribbled_pct": pct1, "seconds": forest_s, **forest})

    ckpt1, s1 = adapt(out / "adapt_round1", base, scrib_images, round1, args.adapt)
    add({"method": "adapted CNN (round 1)", "scribbled_pct": pct1, "seconds": s1,
                 **scores(evaluate(out / "eval_round1", ckpt1, test_images, test_labels))})

    # "label here next" on the scribbled slices, from the adapted CNN's TTA ensemble
    unc = out / "uncertainty_round1"
    evaluate(unc, ckpt1, scrib_images, round1, ["save_uncertainty=true", "tta=true", "label_values=[1,2,3]",
                                                "unlabelled_value=0"])
    rng = np.random.default_rng(args.seed + 100)
    for variant in ("label here next", "random regions"):
        second = []
        for i, (name, truth) in enumerate(zip(scrib_names, truths, strict=True)):
            if variant == "label here next":
                with open(unc / f"{name}_suggestions.csv") as fh:
                    regions = list(csv.DictReader(fh))[: args.regions]
            else:
                regions = random_regions(truth.shape, args.regions, 64, rng)
            second.append(second_round(truth, first[i], regions, args.fraction2, args.seed + 10 + i))
        pct2 = 100 * float(np.mean([labelled_fraction(s) for s in second]))
        tag = "next" if variant == "label here next" else "random"
        paths = write_scribbles(out / f"scribbles_round2_{tag}", scrib_names, second)
        ckpt2, s2 = adapt(out / f"adapt_round2_{tag}", ckpt1, scrib_images, paths, args.adapt)
        add({"method": f"adapted CNN, round 2 ({variant})", "scribbled_pct": pct2, "seconds": s1 + s2,
                     **scores(evaluate(out / f"eval_round2_{tag}", ckpt2, test_images, test_labels))})

    if args.replay_weight > 0:
        replay = [d / f"{n}.tif" for n in args.base_train.split(",")]
        replay_opts = [f"data.replay_images={hydra_list(replay)}",
                       f"data.replay_labels={hydra_list([d / f'{n}_label.tif' for n in args.base_train.split(',')])}",
                       f"data.replay_weight={args.replay_weight}"]
        ckpt_r, s_r = adapt(out / "adapt_round1_replay", base, scrib_images, round1, [*replay_opts, *args.adapt])
        add({"method": f"adapted CNN + replay of the old labels ({args.replay_weight:g})", "scribbled_pct": pct1,
                     "seconds": s_r, **scores(evaluate(out / "eval_round1_replay", ckpt_r, test_images, test_labels))})

    if args.self_train:
        start = time.perf_counter()
        pseudo_images = scrib_images + test_images  # the scored slices' grey only, never their labels
        pseudo = agreed_pseudo_labels(ckpt1, forest_model, pseudo_images, dict(zip(scrib_names, first, strict=True)))
        pct_p = 100 * float(np.mean([labelled_fraction(x) for x in pseudo]))
        paths = write_scribbles(out / "pseudo_labels", [img.stem for img in pseudo_images], pseudo)
        s_p = time.perf_counter() - start
        ckpt_s, s_s = adapt(out / "adapt_self_train", ckpt1, pseudo_images, paths, args.adapt)
        add({"method": f"adapted CNN + self-training ({pct_p:.0f} % pseudo-labelled)", "scribbled_pct": pct1,
             "seconds": s1 + s_p + s_s, **scores(evaluate(out / "eval_self_train", ckpt_s, test_images, test_labels))})

    if args.ceiling:
        dense = [d / f"{n}_label.tif" for n in scrib_names]
        forest_d, forest_ds, _ = forest_scores(scrib_images, [read_image(x) for x in dense], test_images, test_labels)
        add({"method": "ceiling: forest on the dense labels", "scribbled_pct": 100.0, "seconds": forest_ds, **forest_d})
        ckpt_d, s_d = adapt(out / "adapt_dense", base, scrib_images, dense,
                            ["data.label_values=null", "data.unlabelled_value=null", *args.adapt])
        add({"method": "ceiling: CNN adapted on the dense labels", "scribbled_pct": 100.0, "seconds": s_d,
             **scores(evaluate(out / "eval_dense", ckpt_d, test_images, test_labels))})

    write_outputs(out, rows, base, scrib_names, test_names, args.adapt, final=True)


if __name__ == "__main__":
    main()
