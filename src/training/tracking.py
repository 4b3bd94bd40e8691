"""Experiment tracking: a Weights & Biases logger that never needs an account.

``wandb.init`` without an API key and without a terminal raises instead of going offline, so the
mode is decided here: ``WANDB_MODE`` when set, online when credentials exist, offline otherwise.
A training resumed from a checkpoint continues the W&B run of that checkpoint's run directory
(same run id, ``resume="allow"``); inside a Hydra sweep the run is named after the job and
grouped and tagged by the sweep.
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import MLFlowLogger, WandbLogger

log = logging.getLogger(__name__)

WANDB_HOST = "api.wandb.ai"


def wandb_credentials_available() -> bool:
    """True when an API key is in ``WANDB_API_KEY`` or in the netrc file wandb writes on login."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return netrc.netrc(path).authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, PermissionError):
        return False


def resolve_wandb_mode(mode: str | None = None) -> str:
    """The mode a run will use: ``online``, ``offline`` or ``disabled``.

    ``mode`` (config) wins, then ``WANDB_MODE``; ``online`` becomes ``offline`` when no
    credentials are found, with a message saying so.
    """
    mode = mode or os.environ.get("WANDB_MODE") or "online"
    if mode in ("dryrun",):
        mode = "offline"
    if mode not in ("online", "offline", "disabled"):
        raise ValueError(f"logger.wandb.mode must be online, offline or disabled, got {mode!r}")
    if mode == "online" and not wandb_credentials_available():
        log.warning("W&B: no credentials (WANDB_API_KEY or `wandb login`) found: logging offline")
        mode = "offline"
    return mode


def wandb_run_id_in(run_dir: str | Path) -> str | None:
    """The id of the newest W&B run logged under ``run_dir/wandb`` (online or offline), or None.

    W&B names run folders ``run-<time>-<id>`` / ``offline-run-<time>-<id>``.
    """
    wandb_dir = Path(run_dir) / "wandb"
    runs = sorted(wandb_dir.glob("*run-*-*"), key=lambda p: p.name.rsplit("-", 2)[-2])
    runs = [p for p in runs if p.is_dir() and not p.is_symlink()]
    return runs[-1].name.rsplit("-", 1)[-1] if runs else None


def run_dir_of_checkpoint(ckpt_path: str | Path | None, save_dir: str | Path) -> Path | None:
    """The run directory a resumed training comes from.

    ``save_dir`` for ``ckpt_path=last`` (Lightning looks in this run's ``checkpoints/``), else
    the folder above ``checkpoints/``.
    """
    if ckpt_path in (None, ""):
        return None
    if str(ckpt_path) in ("last", "hpc"):
        return Path(save_dir)
    ckpt = Path(ckpt_path)
    return ckpt.parent.parent if ckpt.parent.name == "checkpoints" else ckpt.parent


def sweep_run_identity(
    name: str | None, group: str | None, tags: Sequence[str], hydra_cfg: Mapping[str, Any] | None,
) -> tuple[str | None, str | None, list[str]]:
    """Run name, group and tags of a W&B run, as configured or from the Hydra multirun job.

    As configured for a single run; inside a Hydra multirun the name gets the job number and the
    job's overrides, the group becomes ``<group>/<sweep folder>`` (all jobs of one sweep side by
    side) and the tags get ``sweep``.

    ``hydra_cfg`` is ``HydraConfig.get()`` (or None outside Hydra).
    """
    tags = [str(t) for t in tags]
    if hydra_cfg is None or not str(hydra_cfg.get("mode")).endswith("MULTIRUN"):
        return name, group, tags
    job = hydra_cfg["job"]
    sweep = Path(str(hydra_cfg["sweep"]["dir"])).name
    overrides = str(job.get("override_dirname") or "")
    name = f"{name or 'job'}#{job.get('num', 0)}" + (f" {overrides}" if overrides else "")
    return name[:128], f"{group or 'sweep'}/{sweep}", [*tags, "sweep"]


def _hydra_config() -> Mapping[str, Any] | None:
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def make_wandb_logger(
    project: str = "batteryct",
    save_dir: str | Path = ".",
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    mode: str | None = None,
    log_model: bool | str = False,
    id: str | None = None,  # noqa: A002 (wandb's name)
    resume_from: str | Path | None = None,
    **kwargs,
) -> WandbLogger:
    """A Lightning ``WandbLogger`` whose run lives under ``save_dir/wandb``.

    Args:
        project: the W&B project.
        save_dir: the run folder; the W&B run lives under ``save_dir/wandb``.
        name: the run's name; inside a Hydra sweep see :func:`sweep_run_identity`.
        group: the run's group.
        tags: the run's tags.
        mode: ``online`` / ``offline`` / ``disabled`` or None (see :func:`resolve_wandb_mode`).
        log_model: upload checkpoints as W&B artifacts: False, True (at the end) or ``"all"``
            (every checkpoint as it is written). Offline runs keep them for ``wandb sync``.
        id: continue this W&B run id.
        resume_from: the training's ``ckpt_path`` (a file or ``last``): continue the W&B run
            found in that checkpoint's run directory, so a resumed training is one W&B run.
            Without it, a W&B run already in ``save_dir`` (a restart in the same run folder,
            such as a requeued SLURM job) is continued.
        **kwargs: further arguments of ``WandbLogger`` (and ``wandb.init``).

    Offline runs print where they are and the ``wandb sync`` command that uploads them later.
    """
    mode = resolve_wandb_mode(mode)
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    name, group, tags = sweep_run_identity(name, group, tags, _hydra_config())
    if id is None and (run_dir := run_dir_of_checkpoint(resume_from, save_dir)) is not None:
        id = wandb_run_id_in(run_dir)
        if id is None:
            log.warning("W&B: no earlier run under %s/wandb: the resumed training starts a new W&B run", run_dir)
    elif id is None:  # a restart in the same run folder (e.g. a requeued SLURM job resuming hpc_ckpt)
        id = wandb_run_id_in(save_dir)
    if id is not None:
        log.info("W&B: continuing run %s", id)
        kwargs.setdefault("resume", "allow")
    logger = WandbLogger(
        project=project, save_dir=str(save_dir), name=name, group=group, tags=list(tags),
        mode=mode, log_model=log_model, id=id, **kwargs,
    )
    if mode == "offline":
        log.warning(
            "W&B offline run in %s; upload it later with: wandb sync %s",
            save_dir / "wandb", save_dir / "wandb" / "offline-run-*",
        )
    return logger


def finish_wandb_run(exit_code: int = 0) -> None:
    """Close the active W&B run of this process, if any.

    Lightning's logger leaves it open, and a later ``WandbLogger`` in the same process, e.g. the
    next job of a sweep, would reuse it.
    """
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def make_mlflow_logger(
    experiment_name: str = "batteryct",
    tracking_uri: str | None = None,
    run_name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    **kwargs,
) -> MLFlowLogger:
    """A Lightning ``MLFlowLogger`` on a local SQLite store or a tracking server.

    The store: ``sqlite:///PATH`` (folder created) or a tracking server (``http://host:port``).

    ``group`` and ``tags`` become MLflow run tags (``group=<group>``, ``<tag>=true``); inside a
    Hydra sweep the run is named and grouped like the W&B run (:func:`sweep_run_identity`).
    """
    if tracking_uri and tracking_uri.startswith("sqlite:///"):  # SQLite does not create folders
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    run_name, group, tags = sweep_run_identity(run_name, group, tags, _hydra_config())
    run_tags = {str(t): "true" for t in tags}
    if group:
        run_tags["group"] = group
    return MLFlowLogger(experiment_name=experiment_name, tracking_uri=tracking_uri, run_name=run_name,
                        tags=run_tags or None, **kwargs)
