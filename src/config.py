"""Hydra/OmegaConf set-up shared by the entry points (train.py, evaluate.py) and the tests."""

from __future__ import annotations

import os
from pathlib import Path

from omegaconf import OmegaConf

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "conf"


def setup_config_env() -> None:
    """Register the custom resolvers and point ``paths.root_dir`` at the checkout."""
    os.environ.setdefault("PROJECT_ROOT", str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("len"):
        OmegaConf.register_new_resolver("len", lambda x: len(x))


def to_plain(value):
    """OmegaConf containers → plain dicts/lists (resolved); other values unchanged.

    Checkpoints then hold only plain Python objects, loadable with ``weights_only=True``.
    """
    from omegaconf import DictConfig, ListConfig

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value
