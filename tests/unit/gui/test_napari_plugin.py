"""The napari plugin (optional extra [gui]): open, scribble, adapt in a worker, predict with
uncertainty, save; headless (Xvfb, else QT_QPA_PLATFORM=offscreen) with napari's viewer fixture."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("napari", reason="napari is not installed (pip install 'batteryct[gui]')")
pytest.importorskip("pytestqt", reason="pytest-qt is not installed (pip install 'batteryct[gui]')")


def _display() -> str | None:
    """An X display for napari's OpenGL canvas: $DISPLAY (xvfb-run), else an Xvfb started here
    (stopped at exit), else None (Qt's offscreen platform has no OpenGL for napari's canvas)."""
    if os.environ.get("DISPLAY"):
        return os.environ["DISPLAY"]
    if os.environ.get("QT_QPA_PLATFORM") == "offscreen" or not shutil.which("Xvfb"):
        return None
    for n in range(90 + os.getpid() % 50, 200):
        if Path(f"/tmp/.X11-unix/X{n}").exists() or Path(f"/tmp/.X{n}-lock").exists():
            continue
        proc = subprocess.Popen(["Xvfb", f":{n}", "-screen", "0", "1280x1024x24", "-nolisten", "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(50):
            if Path(f"/tmp/.X11-unix/X{n}").exists():
                atexit.register(proc.terminate)
                os.environ["DISPLAY"] = f":{n}"
                return os.environ["DISPLAY"]
            if proc.poll() is not None:
                break
            time.sleep(0.1)
        proc.terminate()
    return None


if _display() is None:
    pytest.skip("no X display for napari's OpenGL canvas: install xvfb (apt-get install xvfb) or run under "
                "xvfb-run; Qt's offscreen platform gives napari no OpenGL", allow_module_level=True)

from src.data.io import read_image, write_tiff  # noqa: E402
from src.gui.napari_plugin import ScribbleWidget, write_scribbled_slices  # noqa: E402
from src.models.checkpoint import load_segmentation_checkpoint  # noqa: E402
from tests.helpers import blob_labels, grey_from_labels, write_segmentation_checkpoint  # noqa: E402


def test_open_scribble_adapt_predict_save(make_napari_viewer, qtbot, tmp_path):
    ckpt = write_segmentation_checkpoint(tmp_path / "trained.ckpt", base_filters=4)
    truth = blob_labels((3, 48, 48), seed=5)
    write_tiff(tmp_path / "vol.tif", grey_from_labels(truth, 5))
    viewer = make_napari_viewer()
    widget = ScribbleWidget(viewer, ckpt)
    viewer.window.add_dock_widget(widget, name="scribbles")
    widget.open_volume(tmp_path / "vol.tif")
    assert viewer.layers["image"].data.shape == (3, 48, 48)
    scribbles = viewer.layers["scribbles"]
    with pytest.raises(ValueError, match="no scribbles yet"):
        widget.adapt()
    painted = np.zeros_like(truth)
    painted[1, 8:40:4, 4:44] = truth[1, 8:40:4, 4:44] + 1  # strokes on slice 1 (napari: 1..K)
    scribbles.data = painted
    widget.epochs.value = 1
    widget.overrides = ["data.samples_per_epoch=8", "data.batch_size=4", "data.val_max_tiles=2"]
    widget.adapt()
    qtbot.waitUntil(lambda: "uncertainty" in viewer.layers or "failed" in widget.status.value, timeout=180_000)
    assert "failed" not in widget.status.value, widget.status.value
    assert widget.progress.value == 100 and widget.adapted.is_file()
    module, _ = load_segmentation_checkpoint(widget.adapted)
    assert module.class_names == ["NMC", "CBD", "pore"]
    prediction, uncertainty = viewer.layers["prediction"].data, viewer.layers["uncertainty"].data
    assert prediction.shape == truth.shape and set(np.unique(prediction)) <= {1, 2, 3}
    assert uncertainty.shape == truth.shape and np.all(uncertainty >= 0) and np.all(uncertainty <= np.log(3) + 1e-5)
    saved = widget.save_scribbles(tmp_path / "out" / "scribbles.tif")
    assert np.array_equal(read_image(saved), painted)
    model = widget.save_model(tmp_path / "out" / "adapted.ckpt")
    assert model.stat().st_size == widget.adapted.stat().st_size


def test_scribbles_of_another_shape_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"scribbles \(4, 5\) do not have the image's shape \(4, 6\)"):
        write_scribbled_slices(np.zeros((4, 6)), np.zeros((4, 5)), tmp_path)
