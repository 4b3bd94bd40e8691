"""Segmentation quality of a trained model next to classical baselines on the same images:
3-class multi-Otsu, k-means and (with training slices) a random forest on Weka-like features.

    python benchmarks/compare_baselines.py --metrics RUN/eval/metrics.json \
        --images '../shared/data/segmentpy-nmc/{400,1098,698}.tif' --labels '../shared/data/segmentpy-nmc/*_label.tif' \
        --train-images '../shared/data/segmentpy-nmc/{1,200,103,510,929,394,546}.tif'

``--metrics`` is the ``metrics.json`` that ``evaluate.py`` wrote for those images. Prints one
table (overall, pooled over all pixels) and writes it as JSON beside the metrics.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from src.analysis.baselines import RandomForestSegmenter, kmeans_segment, multi_otsu_segment
from src.analysis.metrics import confusion_matrix, scores_from_confusion
from src.data.sources import load_pair, pair_images_labels, pair_key
from src.data.transforms import normalize_percentile


def brace_expand(spec: str) -> list[str]:
    """'a/{1,2}.tif' → ['a/1.tif', 'a/2.tif'] (one brace group)."""
    if "{" not in spec:
        return [spec]
    head, rest = spec.split("{", 1)
    options, tail = rest.split("}", 1)
    return [head + o + tail for o in options.split(",")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--metrics", type=Path, help="metrics.json from evaluate.py on the same images")
    parser.add_argument("--images", required=True)
    parser.add_argument("--labels", required=True)
    parser.add_argument("--sigma", type=float, default=1.0, help="Gaussian blur before Otsu (pixels)")
    parser.add_argument("--dark-to-bright", default="pore,CBD,NMC")
    parser.add_argument("--train-images", help="labelled slices for the random forest (labels found by name)")
    args = parser.parse_args()

    model = json.loads(args.metrics.read_text()) if args.metrics else None
    class_names = model["class_names"] if model else ["NMC", "CBD", "pore"]
    pairs = pair_images_labels(brace_expand(args.images), args.labels)
    order = args.dark_to_bright.split(",")
    methods = {
        f"multi-Otsu (sigma={args.sigma})": lambda im: multi_otsu_segment(im, class_names, order, args.sigma),
        f"k-means (sigma={args.sigma})": lambda im: kmeans_segment(im, class_names, order, args.sigma),
    }
    if args.train_images:
        train = [load_pair(i, lab, len(class_names)) for i, lab in pair_images_labels(brace_expand(args.train_images), args.labels)]
        forest = RandomForestSegmenter().fit([normalize_percentile(i) for i, _ in train], [lab for _, lab in train])
        methods["random forest (Weka-like features)"] = lambda im: forest.predict(normalize_percentile(im))
    cms = {name: np.zeros((len(class_names),) * 2, np.int64) for name in methods}
    for image_path, label_path in pairs:
        if model and pair_key(Path(image_path)) not in model["per_image"]:
            raise SystemExit(f"{image_path} is not in {args.metrics}: evaluate the model on the same images")
        image, label = load_pair(image_path, label_path, len(class_names))
        for name, method in methods.items():
            cms[name] += confusion_matrix(method(image), label, len(class_names))
    rows = {name: scores_from_confusion(cm, class_names) for name, cm in cms.items()}
    if model:
        rows[f"{model['model']} ({Path(model['checkpoint']).name})"] = model["overall"]
    header = f"{'method':38s} {'accuracy':>9s} {'mIoU':>7s} " + " ".join(f"{'IoU_' + n:>9s}" for n in class_names)
    print(f"{len(pairs)} images: " + ", ".join(Path(p).name for p, _ in pairs))
    print(header)
    print("-" * len(header))
    for name, s in rows.items():
        print(f"{name:38s} {s['accuracy']:9.4f} {s['miou']:7.4f} " + " ".join(f"{s['iou'][n]:9.4f}" for n in class_names))
    if args.metrics:
        out = args.metrics.with_name("comparison_baselines.json")
        out.write_text(json.dumps({k: {m: v[m] for m in ("accuracy", "miou", "iou")} for k, v in rows.items()}, indent=2))


if __name__ == "__main__":
    main()
