"""Experiment tracking: a Weights & Biases logger that never needs an account.

``wandb.init`` without an API key and without a terminal raises instead of going offline, so the
mode is decided here: ``WANDB_MODE`` when set, online when credentials exist, offline otherwise.
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Sequence
from pathlib import Path

from pytorch_lightning.loggers import WandbLogger

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


def make_wandb_logger(
    project: str = "batteryct",
    save_dir: str | Path = ".",
    name: str | None = None,
    group: str | None = None,
    tags: Sequence[str] = (),
    mode: str | None = None,
    log_model: bool | str = False,
    **kwargs,
) -> WandbLogger:
    """A Lightning ``WandbLogger`` whose run lives under ``save_dir/wandb``.

    Offline runs print where they are and the ``wandb sync`` command that uploads them later.
    """
    mode = resolve_wandb_mode(mode)
    save_dir = Path(save_dir)
    save_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("WANDB_SILENT", "true")
    logger = WandbLogger(
        project=project, save_dir=str(save_dir), name=name, group=group, tags=list(tags),
        mode=mode, log_model=log_model, **kwargs,
    )
    if mode == "offline":
        log.warning(
            "W&B offline run in %s; upload it later with: wandb sync %s",
            save_dir / "wandb", save_dir / "wandb" / "offline-run-*",
        )
    return logger
