"""Few-label learning on real labelled slices: learning curve and comparison table.

For each model, with and without synthetic pretraining, train on the first N training slices
(N = 1, 2, 4, all), evaluate on held-out slices, and put Otsu, k-means and the random forest
(trained on the same N slices) in the same table. Every run goes through ``train.py`` and
``evaluate.py`` (subprocesses), so what is measured is what a user runs.

    python benchmarks/few_labels.py --data-dir ../shared/data/segmentpy-nmc \\
        --train 1,103,394,200,510,546,929 --test 400,1098,698 --models unet lrcsnet --n 1 2 4 all

``--train`` is ordered: N takes the first N (list slices of different volumes first).
``--lovo`` instead trains on all slices of all volumes but one (volumes = slices grouped by
shape) and tests on every slice of the left-out volume. Pretraining on synthetic volumes runs
once per model unless ``--pretrained MODEL=CKPT`` is given. Finished runs are reused, so an
interrupted study resumes. Writes ``few_labels.csv``, ``few_labels.md`` and
``learning_curve.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from src.data.io import read_image, write_text
from src.data.io.figures import save_figure

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["NMC", "CBD", "pore"]


def run(args: list[str], log: Path) -> None:
    """Run ``python <args>`` in the repo root; its output goes to ``log``; fail loudly."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as fh:
        code = subprocess.call([sys.executable, *args], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"{' '.join(args[:2])} failed (exit {code}); see {log}")


def hydra_list(paths: list[Path]) -> str:
    return "[" + ",".join(str(p) for p in paths) + "]"


def evaluate(out: Path, test: list[Path], labels: str, extra: list[str]) -> dict:
    """evaluate.py on the test slices (cached in ``out/metrics.json``); returns overall scores."""
    metrics = out / "metrics.json"
    if not metrics.is_file():
        run(["evaluate.py", f"images={hydra_list(test)}", f"labels={labels}", f"output_dir={out}",
             "progress=false", *extra], out.with_suffix(".log"))
    return json.loads(metrics.read_text())["overall"]


def train(out: Path, overrides: list[str]) -> Path:
    """train.py with the overrides into ``out`` (reused when best.ckpt exists)."""
    best = out / "checkpoints" / "best.ckpt"
    if not best.is_file():
        run(["train.py", f"hydra.run.dir={out}", *overrides], out.with_suffix(".log"))
    return best


def volumes_by_shape(files: list[Path]) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = defaultdict(list)
    for f in files:
        groups["x".join(map(str, read_image(f).shape))].append(f)
    return dict(groups)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, required=True, help="folder with N.tif and N_label.tif")
    p.add_argument("--train", default="1,103,394,200,510,546,929", help="training slice names, in N order")
    p.add_argument("--test", default="400,1098,698", help="held-out slice names")
    p.add_argument("--models", nargs="+", default=["unet", "lrcsnet"])
    p.add_argument("--curve-models", nargs="*", help="models for N < all (default: --models)")
    p.add_argument("--n", nargs="+", default=["1", "2", "4", "all"], help="training-slice counts")
    p.add_argument("--inits", nargs="+", default=["scratch", "synthetic"], choices=["scratch", "synthetic"])
    p.add_argument("--experiment", default="segmentpy_nmc", help="experiment= config of the real-data runs")
    p.add_argument("--train-args", default="", help="extra train.py overrides for the real-data runs")
    p.add_argument("--pretrain-args", default="", help="extra train.py overrides for synthetic pretraining")
    p.add_argument("--pretrained", nargs="*", default=[], help="MODEL=CKPT: reuse a synthetic pretraining")
    p.add_argument("--eval-args", default="", help="extra evaluate.py overrides (e.g. tta=true)")
    p.add_argument("--lovo", action="store_true", help="leave-one-volume-out instead of the N curve")
    p.add_argument("--no-baselines", action="store_true")
    p.add_argument("--out", type=Path, default=Path("logs/few_labels"))
    a = p.parse_args()

    out = a.out.resolve()
    data = a.data_dir.resolve()
    labels = str(data / "*_label.tif")
    slice_file = {n: data / f"{n}.tif" for n in a.train.split(",") + a.test.split(",")}
    for name, f in slice_file.items():
        if not f.is_file() or not (data / f"{name}_label.tif").is_file():
            raise SystemExit(f"slice {name}: {f} or its {name}_label.tif not found in {data}")
    train_files = [slice_file[n] for n in a.train.split(",")]
    test_files = [slice_file[n] for n in a.test.split(",")]
    eval_args = a.eval_args.split()

    if a.lovo:  # (split name, train files, test files)
        groups = volumes_by_shape(train_files + test_files)
        splits = [(f"without volume {shape}", [f for s, fs in groups.items() if s != shape for f in fs], fs)
                  for shape, fs in groups.items()]
    else:
        counts = [len(train_files) if n == "all" else int(n) for n in a.n]
        splits = [(f"N={n}", train_files[:n], test_files) for n in counts]

    pretrained = dict(item.split("=", 1) for item in a.pretrained)
    if "synthetic" in a.inits:
        for model in a.models:
            if model not in pretrained:
                pretrained[model] = str(train(out / f"pretrain_{model}", [f"model={model}", "data=synthetic", "logger=csv",
                                                                             *a.pretrain_args.split()]))

    rows = []
    for split, train_set, test_set in splits:
        tag = split.replace(" ", "_").replace("=", "")
        if not a.no_baselines:
            for method in ("otsu", "kmeans", "random_forest"):
                extra = [f"method={method}"] + ([f"method.train_images={hydra_list(train_set)}"] if method == "random_forest" else [])
                scores = evaluate(out / tag / method, test_set, labels, extra)
                rows.append({"split": split, "method": method, "init": "-", **flat(scores)})
        partial = not a.lovo and len(train_set) < len(train_files)
        for model in (a.curve_models if partial and a.curve_models is not None else a.models):
            for init in a.inits:
                run_dir = out / tag / f"{model}_{init}"
                overrides = [f"experiment={a.experiment}", f"model={model}", f"data.images={hydra_list(train_set)}",
                             "logger=csv", *a.train_args.split()]
                if init == "synthetic":
                    overrides.append(f"init_from={pretrained[model]}")
                ckpt = train(run_dir, overrides)
                scores = evaluate(run_dir / "eval", test_set, labels, [f"ckpt_path={ckpt}", *eval_args])
                rows.append({"split": split, "method": model, "init": init, **flat(scores)})
            print(f"done: {split} {model}", flush=True)

    table = format_rows(rows)
    print(table)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_text(out / "few_labels.csv", buf.getvalue())
    write_text(out / "few_labels.md", table + "\n")
    if not a.lovo:
        plot_curve(rows, [len(s[1]) for s in splits], out / "learning_curve.png")
    print(f"\nwritten: {out}/few_labels.csv, .md" + ("" if a.lovo else ", learning_curve.png"))


def flat(scores: dict) -> dict:
    return {"accuracy": scores["accuracy"], "miou": scores["miou"],
            **{f"iou_{c}": scores["iou"][c] for c in CLASSES}}


def format_rows(rows: list[dict]) -> str:
    lines = ["| split | method | pretraining | acc | mIoU | IoU NMC | IoU CBD | IoU pore |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['split']} | {r['method']} | {r['init']} | {r['accuracy']:.3f} | {r['miou']:.3f} | "
                     f"{r['iou_NMC']:.3f} | {r['iou_CBD']:.3f} | {r['iou_pore']:.3f} |")
    return "\n".join(lines)


def plot_curve(rows: list[dict], counts: list[int], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    series: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        n = int(r["split"].split("=")[1])
        series[r["method"] + ("" if r["init"] == "-" else f" ({r['init']})")].append((n, r["miou"]))
    for name, points in series.items():
        points.sort()
        if len(points) < 2:
            continue
        ax.plot([n for n, _ in points], [v for _, v in points], "o-" if "(" in name else "s--", label=name)
    ax.set_xscale("log", base=2)
    counts = sorted(set(counts))
    ax.set_xticks(counts, [str(c) for c in counts])
    ax.set_xlabel("labelled training slices N")
    ax.set_ylabel("held-out mean IoU")
    ax.set_ylim(0, max(0.8, float(np.nanmax([r["miou"] for r in rows])) + 0.05))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save_figure(fig, path)


if __name__ == "__main__":
    main()
