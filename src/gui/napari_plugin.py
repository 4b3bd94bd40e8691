"""napari plugin: paint scribbles on a volume and adapt a trained net to them.

Open a volume, paint scribbles, adapt a trained net to them, see the prediction and its
uncertainty, save scribbles and model (``pip install batteryct[gui]``).

The dock widget :class:`ScribbleWidget` (napari: *Plugins → batteryct scribbles*) holds:

- **open**: a grey image or volume (TIFF, ``.npy``, Zarr/HDF5, the output of ``reconstruct.py``)
  becomes the layer ``image``, with an empty Labels layer ``scribbles`` to paint in
  (0 = unlabelled, 1..K = the checkpoint's classes, napari's convention);
- **adapt**: the slices (along z) that carry scribbles are fine-tuned on, from the checkpoint,
  in a worker thread with a progress bar (:func:`src.training.adapt.adapt_to_scribbles`, the
  ``experiment=adapt_scribbles`` recipe); then **predict** runs by itself;
- **predict**: layers ``prediction`` (labels) and ``uncertainty`` (predictive entropy of the
  8-fold TTA ensemble, nats) from the adapted (or the original) checkpoint;
- **save scribbles** / **save model**: the scribbles as a label TIFF, the adapted checkpoint.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from src.analysis.uncertainty import predictive_entropy
from src.data.io import read_image, write_tiff
from src.data.transforms import normalize_percentile

log = logging.getLogger(__name__)

__all__ = ["ScribbleWidget", "predict_with_uncertainty", "read_volume", "write_scribbled_slices"]


def _default_epochs() -> int:
    """``trainer.max_epochs`` of ``experiment=adapt_scribbles`` (the widget's starting value)."""
    from omegaconf import OmegaConf

    from src.config import CONFIG_DIR

    return int(OmegaConf.load(CONFIG_DIR / "experiment" / "adapt_scribbles.yaml").trainer.max_epochs)


def read_volume(path: str | Path) -> np.ndarray:
    """A grey 2D/3D image from a file any reader of the project opens (TIFF, npy, Zarr, HDF5)."""
    path = Path(path)
    try:
        return np.asarray(read_image(path))
    except Exception:  # volumes: Zarr, HDF5, folders of slices (reconstruct.py outputs)
        from src.data.io.volumes import open_volume

        with open_volume(str(path)) as source:
            return np.asarray(source.read(tuple(slice(0, n) for n in source.shape)))


def write_scribbled_slices(image: np.ndarray, scribbles: np.ndarray, folder: Path) -> tuple[list[Path], list[Path]]:
    """The 2D slices (along z for volumes) that carry scribbles, as ``zN.tif`` / ``zN_label.tif``.

    Raises:
        ValueError: the scribbles' shape is not the image's, or nothing is scribbled.
    """
    image, scribbles = np.asarray(image), np.asarray(scribbles)
    if scribbles.shape != image.shape:
        raise ValueError(f"scribbles {scribbles.shape} do not have the image's shape {image.shape}")
    imgs, labs = (image[None], scribbles[None]) if image.ndim == 2 else (image, scribbles)
    folder.mkdir(parents=True, exist_ok=True)
    images, labels = [], []
    for z in range(len(imgs)):
        if not np.any(labs[z]):
            continue
        write_tiff(folder / f"z{z}.tif", imgs[z].astype(np.float32))
        write_tiff(folder / f"z{z}_label.tif", labs[z].astype(np.uint8))
        images.append(folder / f"z{z}.tif")
        labels.append(folder / f"z{z}_label.tif")
    if not images:
        raise ValueError("no scribbles yet: paint some strokes in the 'scribbles' layer (1..K = the classes)")
    return images, labels


def predict_with_uncertainty(ckpt: str | Path, image: np.ndarray, tta: bool = True,
                             device: str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """Labels (uint8) and predictive entropy (float32, nats) of ``image`` with checkpoint ``ckpt``."""
    from src.inference.sliding_window import SlidingWindowPredictor
    from src.models.checkpoint import load_segmentation_checkpoint

    module, data_hparams = load_segmentation_checkpoint(ckpt)
    norm = dict(data_hparams.get("normalize") or {"lower": 0.5, "upper": 99.5})
    inference = dict(module.hparams.get("inference") or {})
    predictor = SlidingWindowPredictor(module.net, module.spatial_dims, module.size_multiple,
                                       roi_size=inference.get("roi_size", 256), overlap=inference.get("overlap", 0.25),
                                       device=device, tta=tta)
    parts: list[np.ndarray] = []
    labels = predictor.predict(normalize_percentile(np.asarray(image), norm["lower"], norm["upper"]),
                               lambda _z, p: parts.append(p), progress=False)
    probs = parts[0] if len(parts) == 1 else np.concatenate(parts, axis=1)
    return labels, predictive_entropy(probs)


def _container_base():
    from magicgui.widgets import Container

    return Container


class ScribbleWidget(_container_base()):  # type: ignore[misc]
    """The dock widget (see the module docstring). ``viewer``: the napari viewer."""

    def __init__(self, viewer: Any, checkpoint: str | Path | None = None) -> None:
        from magicgui.widgets import CheckBox, FileEdit, Label, ProgressBar, PushButton, SpinBox

        super().__init__()
        self.viewer = viewer
        self.volume_path = FileEdit(label="volume", mode="r")
        self.checkpoint = FileEdit(label="checkpoint", mode="r", value=str(checkpoint or ""))
        self.open_button = PushButton(text="open volume")
        self.epochs = SpinBox(label="epochs", value=_default_epochs(), min=1, max=100)
        self.tta = CheckBox(label="TTA uncertainty", value=True)
        self.adapt_button = PushButton(text="adapt")
        self.predict_button = PushButton(text="predict")
        self.progress = ProgressBar(label="progress", min=0, max=100, value=0)
        self.status = Label(value="open a volume, paint scribbles, press adapt")
        self.save_scribbles_path = FileEdit(label="scribbles file", mode="w", value="scribbles.tif")
        self.save_scribbles_button = PushButton(text="save scribbles")
        self.save_model_path = FileEdit(label="model file", mode="w", value="adapted.ckpt")
        self.save_model_button = PushButton(text="save model")
        self.extend([self.volume_path, self.open_button, self.checkpoint, self.epochs, self.tta, self.adapt_button,
                     self.predict_button, self.progress, self.status, self.save_scribbles_path,
                     self.save_scribbles_button, self.save_model_path, self.save_model_button])
        self.open_button.changed.connect(lambda: self.open_volume(self.volume_path.value))
        self.adapt_button.changed.connect(self.adapt)
        self.predict_button.changed.connect(self.predict)
        self.save_scribbles_button.changed.connect(lambda: self.save_scribbles(self.save_scribbles_path.value))
        self.save_model_button.changed.connect(lambda: self.save_model(self.save_model_path.value))
        self.adapted: Path | None = None
        #: more Hydra overrides of the adaptation (e.g. ``data.samples_per_epoch=64``)
        self.overrides: list[str] = []
        self.worker = None
        self._workdir = Path(tempfile.mkdtemp(prefix="batteryct_scribbles_"))

    # -- layers -----------------------------------------------------------------------------
    def open_volume(self, path: str | Path) -> None:
        """Add ``image`` (grey) and an empty ``scribbles`` Labels layer of its shape."""
        data = read_volume(path)
        self.set_image(data, Path(path).name)

    def set_image(self, data: np.ndarray, name: str = "image") -> None:
        """Show ``data`` as the layer ``image`` and add an empty ``scribbles`` layer."""
        for layer in ("image", "scribbles", "prediction", "uncertainty"):
            if layer in self.viewer.layers:
                self.viewer.layers.remove(layer)
        self.viewer.add_image(np.asarray(data, np.float32), name="image", metadata={"source": name})
        self.viewer.add_labels(np.zeros(np.shape(data), np.uint8), name="scribbles")
        self.status.value = f"{name} {np.shape(data)}: paint 1..K in 'scribbles'"

    def _layer(self, name: str) -> Any:
        if name not in self.viewer.layers:
            raise ValueError(f"no '{name}' layer: open a volume first")
        return self.viewer.layers[name]

    def current_checkpoint(self) -> Path:
        """The checkpoint in use: the adapted one if any, else the chosen one (must exist)."""
        ckpt = self.adapted or Path(str(self.checkpoint.value))
        if not ckpt.is_file():
            raise FileNotFoundError(f"checkpoint {ckpt} does not exist: choose a trained checkpoint")
        return ckpt

    # -- actions ----------------------------------------------------------------------------
    def adapt(self) -> Any:
        """Fine-tune on the scribbled slices in a worker thread; returns the worker."""
        from napari.qt.threading import thread_worker

        from src.training.adapt import adapt_to_scribbles

        init = Path(str(self.checkpoint.value))
        if not init.is_file():
            raise FileNotFoundError(f"checkpoint {init} does not exist: choose a trained checkpoint")
        run_dir = self._workdir / f"adapt{len(list(self._workdir.glob('adapt*')))}"
        images, labels = write_scribbled_slices(self._layer("image").data, self._layer("scribbles").data,
                                                run_dir / "scribbles")
        overrides = [f"trainer.max_epochs={int(self.epochs.value)}", *self.overrides]
        start_from = self.adapted or init

        state = {"percent": 0, "steps": 0}

        def report(done: int, total: int) -> None:  # called in the training thread
            state["percent"], state["steps"] = int(100 * done / max(total, 1)), done

        @thread_worker
        def work():
            ckpt = adapt_to_scribbles(start_from, images, labels, run_dir, overrides, on_progress=report)
            return ckpt, state["steps"]

        worker = work()
        worker.returned.connect(self._adapted)
        worker.errored.connect(lambda e: setattr(self.status, "value", f"adapt failed: {e}"))
        self.status.value = f"adapting on {len(images)} scribbled slice(s)..."
        self.progress.value = 0
        self._start_progress_timer(state)
        self.worker = worker
        worker.start()
        return worker

    def _start_progress_timer(self, state: dict) -> None:
        """Show the training thread's progress (``state["percent"]``) every 200 ms."""
        from qtpy.QtCore import QTimer

        timer = QTimer()
        timer.setInterval(200)

        def tick() -> None:
            self.progress.value = min(100, int(state["percent"]))
            if self.worker is not None and not self.worker.is_running:
                timer.stop()

        timer.timeout.connect(tick)
        timer.start()
        self._timer = timer

    def _adapted(self, result: tuple[Path, int]) -> None:
        ckpt, steps = result
        self.adapted = Path(ckpt)
        self.progress.value = 100
        self.status.value = f"adapted in {steps} steps: {Path(ckpt).name}; predicting..."
        self.predict()

    def predict(self) -> None:
        """Layers ``prediction`` and ``uncertainty`` from the adapted (or chosen) checkpoint."""
        labels, entropy = predict_with_uncertainty(self.current_checkpoint(), self._layer("image").data,
                                                   tta=bool(self.tta.value))
        for name in ("prediction", "uncertainty"):
            if name in self.viewer.layers:
                self.viewer.layers.remove(name)
        self.viewer.add_labels(labels + 1, name="prediction", opacity=0.4)  # 1..K like the scribbles
        self.viewer.add_image(entropy, name="uncertainty", colormap="magma", blending="additive", opacity=0.6)
        self.status.value = f"mean uncertainty {float(entropy.mean()):.3f} nats: scribble where it is bright"

    def save_scribbles(self, path: str | Path) -> Path:
        """The scribbles layer as a uint8 label TIFF (0 = unlabelled, 1..K)."""
        path = Path(path)
        write_tiff(path, np.asarray(self._layer("scribbles").data, np.uint8))
        self.status.value = f"scribbles saved: {path}"
        return path

    def save_model(self, path: str | Path) -> Path:
        """Copy the adapted checkpoint to ``path``."""
        if self.adapted is None:
            raise ValueError("nothing adapted yet: press adapt first")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(self.adapted, path)
        self.status.value = f"model saved: {path}"
        return path
