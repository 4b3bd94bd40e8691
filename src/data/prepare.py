"""Run the configured data's preparation (e.g. generate the synthetic volumes) without training.

Usage: ``python -m src.data.prepare [data=synthetic] [data.prepare.train_seeds=[0,1,2]]``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from src.config import CONFIG_DIR, setup_config_env


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    """Instantiate the configured DataModule and run its ``prepare_data``."""
    datamodule = hydra.utils.instantiate(cfg.data)
    datamodule.prepare_data()


if __name__ == "__main__":
    setup_config_env()
    main()
