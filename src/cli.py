"""The shared tail of the commands (``train.py``, ``evaluate.py``, ``predict.py`` ...).

Each command module defines one function that takes its composed config, turns it into typed
arguments and calls the library; its ``__main__`` block is ``run_command("<config>", function)``.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

import hydra
from omegaconf import DictConfig

from src.config import CONFIG_DIR, setup_config_env

__all__ = ["run_command"]


def run_command(config_name: str, task: Callable[[DictConfig], Any]) -> None:
    """Run ``task`` as a Hydra command on ``conf/<config_name>.yaml``.

    Parse the command line against that config (overrides, ``--multirun``, ``--cfg`` ...), then
    call ``task(cfg)`` once per job.

    An error of a single run prints one line (``<command>: <error type>: <message>``, also in the
    run's log) and exits with status 1; ``HYDRA_FULL_ERROR=1`` shows the traceback instead, and a
    ``--multirun`` job's error goes to Hydra's launcher as before.

    Args:
        config_name: the top-level config of the command, e.g. ``"evaluate"``.
        task: the command's function; its return value is the job's (Optuna reads ``train``'s).
    """
    setup_config_env()

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    @functools.wraps(task)  # Hydra names the job and finds the calling file from ``task``
    def main(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except Exception as exc:  # one line for a user's mistake; the traceback on request
            if os.environ.get("HYDRA_FULL_ERROR") == "1" or _multirun():
                raise  # a sweep's launcher and sweeper handle (or record) the failed job
            message = f"{config_name}: {type(exc).__name__}: {exc}"
            print(f"{message} (HYDRA_FULL_ERROR=1 shows the traceback)", file=sys.stderr)
            record = logging.LogRecord(config_name, logging.ERROR, __file__, 0, message, None, None)
            for handler in logging.getLogger().handlers:  # and into the run's log file
                if isinstance(handler, logging.FileHandler):
                    handler.handle(record)
            raise SystemExit(1) from None

    main()


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    try:
        return HydraConfig.get().mode == RunMode.MULTIRUN
    except ValueError:  # no Hydra context
        return False
