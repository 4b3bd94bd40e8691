"""The shared tail of the commands (``train.py``, ``evaluate.py``, ``predict.py`` ...).

Each command module defines one function that takes its composed config, turns it into typed
arguments and calls the library; its ``__main__`` block is ``run_command("<config>", function)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from src.config import CONFIG_DIR, setup_config_env

__all__ = ["run_command"]


def run_command(config_name: str, task: Callable[[DictConfig], Any]) -> None:
    """Run ``task`` as a Hydra command: parse the command line against ``conf/<config_name>.yaml``
    (overrides, ``--multirun``, ``--cfg`` ...), then call ``task(cfg)`` once per job.

    Args:
        config_name: the top-level config of the command, e.g. ``"evaluate"``.
        task: the command's function; its return value is the job's (Optuna reads ``train``'s).
    """
    setup_config_env()

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    @functools.wraps(task)  # Hydra names the job and finds the calling file from ``task``
    def main(cfg: DictConfig) -> Any:
        return task(cfg)

    main()
