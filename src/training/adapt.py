"""Fine-tune a trained segmentation net on scribbles, in-process (the napari plugin's "adapt").

:func:`adapt_to_scribbles` runs what ``python train.py experiment=adapt_scribbles
init_from=CKPT data.images=... data.labels=...`` runs, with a progress callback instead of a
logger, and returns the adapted checkpoint.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import pytorch_lightning as pl

log = logging.getLogger(__name__)

__all__ = ["ProgressCallback", "adapt_to_scribbles"]


class ProgressCallback(pl.Callback):
    """Calls ``report(done, total)`` after every training step (``total`` = all steps planned).

    Raising inside ``report`` (e.g. a cancelled GUI worker) stops the training.
    """

    def __init__(self, report: Callable[[int, int], None]) -> None:
        self.report = report

    def on_train_batch_end(self, trainer: pl.Trainer, *args) -> None:
        """Call ``report`` with the global step and the total number of planned steps."""
        total = int(trainer.max_epochs or 1) * int(trainer.num_training_batches or 1)
        self.report(int(trainer.global_step), max(total, 1))


def adapt_to_scribbles(init_from: str | Path, images: Sequence[str | Path], scribbles: Sequence[str | Path],
                       output_dir: str | Path, overrides: Sequence[str] = (),
                       on_progress: Callable[[int, int], None] | None = None, reinit_head: bool = False) -> Path:
    """Fine-tune checkpoint ``init_from`` on scribbled images; return the adapted checkpoint.

    Args:
        init_from: the trained segmentation checkpoint.
        images: 2D grey images ``(y, x)`` (or volumes) with scribbles.
        scribbles: their scribble files, napari/ilastik convention (0 = unlabelled, 1..K),
            same shapes (paired by name ``N.tif`` ↔ ``N_label.tif`` or by order).
        output_dir: the run directory (``checkpoints/last.ckpt`` is the result).
        overrides: more Hydra overrides of ``experiment=adapt_scribbles`` (schedule, replay, ...).
        on_progress: ``on_progress(step, total_steps)`` after every step.
        reinit_head: re-initialise the output layer when the classes differ from the checkpoint's.

    Returns:
        The path of the adapted checkpoint.
    """
    import hydra

    from src.config import compose_config
    from src.models.checkpoint import load_pretrained_weights

    output_dir = Path(output_dir)
    lst = lambda paths: "[" + ",".join(str(Path(p).resolve()) for p in paths) + "]"  # noqa: E731
    cfg = compose_config("train", [
        "experiment=adapt_scribbles", f"init_from={Path(init_from).resolve()}", f"data.images={lst(images)}",
        f"data.labels={lst(scribbles)}", "logger=none", f"paths.output_dir={output_dir.resolve()}",
        f"paths.log_dir={output_dir.resolve()}/logs", f"reinit_head={bool(reinit_head)}",
        "callbacks.progress_bar=null", *overrides])
    pl.seed_everything(cfg.seed, workers=True)
    from src.models.checkpoint import use_checkpoint_net

    datamodule = hydra.utils.instantiate(cfg.data)
    if cfg.get("net_from_init"):
        use_checkpoint_net(cfg)
    model = hydra.utils.instantiate(cfg.model, _recursive_=False)
    n = load_pretrained_weights(model, cfg.init_from, reinit_head=bool(cfg.reinit_head))
    log.info("adapting %s (%d tensors) to %d scribbled images", init_from, n, len(images))
    callbacks = [hydra.utils.instantiate(c) for k, c in cfg.callbacks.items()
                 if c is not None and "_target_" in c and k != "lr_monitor"]
    if on_progress is not None:
        callbacks.append(ProgressCallback(on_progress))
    trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=False, enable_progress_bar=False)
    trainer.fit(model=model, datamodule=datamodule)
    last = output_dir / "checkpoints" / "last.ckpt"
    if not last.is_file():
        raise RuntimeError(f"adaptation wrote no checkpoint {last}")
    return last
