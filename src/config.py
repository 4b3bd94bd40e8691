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
    if not OmegaConf.has_resolver("rank_suffix"):
        OmegaConf.register_new_resolver("rank_suffix", rank_suffix)


def compose_config(config_name: str, overrides: list[str], return_hydra_config: bool = False):
    """Compose ``conf/<config_name>.yaml`` with ``overrides`` as the command line would.

    Hydra's compose API; for scripts and tests that call ``train``/``evaluate`` in-process.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=config_name, overrides=overrides, return_hydra_config=return_hydra_config)


def process_rank() -> int:
    """Global rank of this training process before torch.distributed starts.

    SLURM's task id under srun, else Lightning's ``NODE_RANK``/``LOCAL_RANK`` of the processes
    it spawns.
    """
    if "SLURM_PROCID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        return int(os.environ["SLURM_PROCID"])
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "0")) or local + 1
    return int(os.environ.get("NODE_RANK", "0")) * per_node + local


def rank_suffix() -> str:
    """``""`` in the first process, ``_rank<N>`` in the others (their own log files)."""
    rank = process_rank()
    return f"_rank{rank}" if rank else ""


def to_plain(value):
    """OmegaConf containers → plain dicts/lists (resolved); other values unchanged.

    Checkpoints then hold only plain Python objects, loadable with ``weights_only=True``.
    """
    from omegaconf import DictConfig, ListConfig

    if isinstance(value, DictConfig | ListConfig):
        return OmegaConf.to_container(value, resolve=True)
    return value


def resolve_device(name: str = "auto", per_rank: bool = False) -> str:
    """The torch device of a ``device=`` setting.

    Args:
        name: ``"auto"`` (the GPU when there is one, else the CPU), ``"cpu"``, ``"cuda"`` or
            ``"cuda:<i>"``.
        per_rank: with ``"auto"``, the GPU of this process's ``LOCAL_RANK`` (``cuda:<i>``).

    Returns:
        The device name, e.g. ``"cpu"``, ``"cuda"`` or ``"cuda:1"``.

    Raises:
        RuntimeError: a CUDA device is asked for but CUDA is not available.
    """
    import torch

    if name == "auto":
        if not torch.cuda.is_available():
            return "cpu"
        return f"cuda:{int(os.environ.get('LOCAL_RANK', 0)) % torch.cuda.device_count()}" if per_rank else "cuda"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device={name!r} requested but CUDA is not available; use device=cpu")
    return name
