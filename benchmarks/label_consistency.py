"""How predictable are a folder's hand labels from their own slice, against from other slices?

    python benchmarks/label_consistency.py --data-dir ../shared/data/segmentpy-nmc

For every ``NAME.tif`` with a ``NAME_label.tif`` beside it: a random forest (Weka-like
features) trained on the left half of that slice, and one trained on all other slices, both
scored on the right half (:mod:`src.analysis.label_consistency`). Prints the table and writes
``label_consistency.md``, ``.json`` and ``.png`` (mIoU within / across per slice) into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from src.analysis.label_consistency import format_consistency_table, label_consistency
from src.analysis.segmenters import RandomForestSegmenter
from src.data.io import natural_sort_key, write_text
from src.data.io.figures import save_figure
from src.data.sources import load_pair, pair_key
from src.data.transforms import normalize_percentile

ROOT = Path(__file__).resolve().parents[1]


def plot_consistency(rows: list[dict], path: Path) -> None:
    """Bar chart of the mIoU within / across per slice (and pooled) as a PNG."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.5 + 0.6 * len(rows), 3.4))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["within"]["miou"] for r in rows], 0.4, label="within slice (other half)")
    ax.bar(x + 0.2, [r["across"]["miou"] for r in rows], 0.4, label="across slices (all others)")
    ax.set_xticks(x, [r["slice"] for r in rows], rotation=45)
    ax.set_ylabel("mIoU on the right half")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title("How consistent are the hand labels?")
    fig.tight_layout()
    save_figure(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "segmentpy-nmc")
    p.add_argument("--classes", nargs="+", default=["NMC", "CBD", "pore"], help="phase names, label order")
    p.add_argument("--trees", type=int, default=100)
    p.add_argument("--samples-per-class", type=int, default=4000)
    p.add_argument("--out", type=Path, default=ROOT / "logs" / "label_consistency")
    a = p.parse_args()

    label_files = sorted(a.data_dir.glob("*_label.tif"), key=natural_sort_key)
    if len(label_files) < 2:
        raise SystemExit(f"{a.data_dir}: need at least two NAME.tif + NAME_label.tif pairs, found {len(label_files)}")
    names, images, labels = [], [], []
    for label_file in label_files:
        img_file = label_file.with_name(label_file.name.replace("_label", ""))
        if not img_file.is_file():
            raise SystemExit(f"{label_file}: no image {img_file.name} beside it")
        image, label = load_pair(img_file, label_file, len(a.classes))  # checks shapes and label values
        names.append(pair_key(img_file))
        images.append(normalize_percentile(np.asarray(image, np.float32)))
        labels.append(label)

    start = time.perf_counter()
    rows = label_consistency(
        images, labels, a.classes, names,
        make_segmenter=lambda: RandomForestSegmenter(n_estimators=a.trees, samples_per_class=a.samples_per_class))
    table = format_consistency_table(rows, a.classes)
    print(table)
    print(f"({len(names)} slices, {time.perf_counter() - start:.0f} s)")

    a.out.mkdir(parents=True, exist_ok=True)
    write_text(a.out / "label_consistency.md", table + "\n")
    write_text(a.out / "label_consistency.json", json.dumps(rows, indent=1))
    plot_consistency(rows, a.out / "label_consistency.png")
    print(f"wrote {a.out}/label_consistency.md, .json, .png")


if __name__ == "__main__":
    main()
