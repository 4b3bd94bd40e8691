"""Train a model: ``python train.py model=lrcsnet data=synthetic trainer=cpu logger=wandb``.

The recipe: config → data → model → callbacks and loggers → Trainer.fit. The run directory
(``hydra.run.dir``) receives ``checkpoints/best.ckpt`` and ``checkpoints/last.ckpt``; a run
restarted with ``ckpt_path=last`` (same ``hydra.run.dir``) or ``ckpt_path=FILE`` continues from
the saved step. ``main`` returns ``optimized_metric`` (the best value) for sweepers; in a
multirun (``-m``) a job that fails is recorded (``error.txt``, the sweep summary) and the sweep
goes on, unless ``sweep_fail_fast=true``.
"""

from __future__ import annotations

import logging
import math
import traceback
from pathlib import Path

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import LearningRateMonitor

from src.cli import run_command
from src.training.sweeps import ERROR_FILE, in_multirun
from src.training.tracking import finish_wandb_run

log = logging.getLogger("train")


def instantiate_group(group: DictConfig | None) -> list:
    """Every entry with a ``_target_`` in a config group (callbacks, loggers)."""
    if not group:
        return []
    return [hydra.utils.instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def train(cfg: DictConfig) -> dict[str, float]:
    """Fit the configured model; return the final callback metrics (floats)."""
    if cfg.get("init_from") and not Path(cfg.init_from).is_file():
        from src.models.checkpoint import CheckpointNotFoundError

        raise CheckpointNotFoundError(
            f"init_from={cfg.init_from} does not exist: run the pretraining first (the experiment "
            "config's header names the command), point init_from at your checkpoint, or set init_from=null")
    pl.seed_everything(cfg.seed, workers=True)
    log.info("data: %s", cfg.data._target_)
    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data)
    if cfg.get("init_from") and cfg.get("net_from_init"):  # fine-tune exactly the checkpoint's net
        from src.models.checkpoint import use_checkpoint_net

        use_checkpoint_net(cfg)
    log.info("model: %s (%s)", cfg.model.name, cfg.model.net._target_)
    model: pl.LightningModule = hydra.utils.instantiate(cfg.model, _recursive_=False)
    if cfg.get("init_from"):
        from src.models.checkpoint import load_pretrained_weights

        n = load_pretrained_weights(model, cfg.init_from, reinit_head=bool(cfg.get("reinit_head", False)))
        log.info("network starts from %s (%d tensors; fine-tuning)", cfg.init_from, n)
    loggers = instantiate_group(cfg.get("logger"))
    callbacks = instantiate_group(cfg.get("callbacks"))
    if not loggers:  # nothing would receive the learning rate
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers or False)
    try:
        for logger in loggers:
            logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
        trainer.fit(model=model, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))
    except BaseException:
        finish_wandb_run(exit_code=1)
        raise
    finish_wandb_run(exit_code=0)  # the next job of a sweep (same process) starts its own run
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
    best = getattr(trainer.checkpoint_callback, "best_model_path", "")
    if best and trainer.is_global_zero:
        log.info("best checkpoint: %s (%s = %.4f)", best, cfg.optimized_metric,
                 float(trainer.checkpoint_callback.best_model_score))
    if best:
        metrics[cfg.optimized_metric] = float(trainer.checkpoint_callback.best_model_score)
    return metrics


def main(cfg: DictConfig) -> float | None:
    """Train; return ``optimized_metric`` (None when missing or NaN: a failed trial for Optuna)."""
    try:
        metrics = train(cfg)
    except Exception:
        if not in_multirun() or cfg.get("sweep_fail_fast", False):
            raise
        # one failed job must not stop the sweep: keep the traceback beside the job's outputs
        log.exception("job failed; the sweep goes on (sweep_fail_fast=false)")
        from src.data.io import write_text

        write_text(Path(cfg.paths.output_dir) / ERROR_FILE, traceback.format_exc())
        return None
    value = metrics.get(cfg.optimized_metric)
    return None if value is None or math.isnan(value) else value


if __name__ == "__main__":
    run_command("train", main)
