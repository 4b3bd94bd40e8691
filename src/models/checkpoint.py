"""Loading trained segmentation checkpoints with clear errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from src.models.segmentation import SegmentationModule, current_target


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable or not the model that was asked for."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint file does not exist."""


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The checkpoint dict at ``path``; :class:`CheckpointError` naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for corrupt files
        raise CheckpointError(f"checkpoint {path} cannot be read ({type(err).__name__}: {err})") from err
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(ckpt).__name__}, not a Lightning checkpoint")
    return ckpt


def load_segmentation_checkpoint(
    path: str | Path, expected_model: str | None = None, map_location: str = "cpu"
) -> tuple[SegmentationModule, dict[str, Any]]:
    """Rebuild the trained module from ``path``; also return the data settings it was trained
    with (``datamodule_hyper_parameters``: normalisation percentiles, spatial dims, ...).

    Raises :class:`CheckpointError` when the file does not exist, is not a segmentation
    checkpoint of this project, holds another model than ``expected_model`` (a model name such
    as ``lrcsnet``), or its weights do not fit the stored network.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, map_location)
    hparams = ckpt.get("hyper_parameters", {})
    if "state_dict" not in ckpt or "net" not in hparams or "class_names" not in hparams:
        raise CheckpointError(
            f"checkpoint {path} is not a segmentation checkpoint of this project "
            "(expected hyper_parameters with 'net' and 'class_names' and a state_dict)"
        )
    name = hparams.get("name", "?")
    target = hparams["net"].get("_target_", "?") if isinstance(hparams["net"], dict) else "?"
    if expected_model is not None and expected_model != name:
        raise CheckpointError(
            f"checkpoint {path} holds model '{name}' ({target}), but model_name={expected_model} was asked"
        )
    try:
        module = SegmentationModule(**{k: v for k, v in hparams.items() if k in
                                       ("net", "class_names", "loss", "optimizer", "scheduler", "inference", "name")})
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except (RuntimeError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path}: weights do not fit model '{name}' ({target}): {err}") from err
    module.eval()
    return module, dict(ckpt.get("datamodule_hyper_parameters", {}))


def checkpoint_kind(path: str | Path) -> str:
    """``"segmentation"`` or ``"reconstruction"``, from the network the checkpoint stores.

    Raises :class:`CheckpointError` for a missing or unreadable file or an unknown kind.
    """
    path = Path(path)
    hparams = read_checkpoint(path).get("hyper_parameters", {})
    net = hparams.get("net") if isinstance(hparams, dict) else None
    target = net.get("_target_", "") if isinstance(net, dict) else ""
    if current_target(target).startswith("src.models.nets.reconstruction."):
        return "reconstruction"
    if "class_names" in hparams:
        return "segmentation"
    raise CheckpointError(
        f"checkpoint {path} is not a segmentation or reconstruction checkpoint of this project "
        "(expected hyper_parameters with 'net' and 'class_names' and a state_dict)"
    )


def load_pretrained_weights(module: torch.nn.Module, path: str | Path, prefix: str = "net.") -> int:
    """Start ``module`` from the network weights of checkpoint ``path`` (fine-tuning).

    Only the parameters and buffers under ``prefix`` are copied; optimizer, epoch and learning
    rate schedule start fresh (use ``ckpt_path=`` to *resume* a run instead). Returns the number
    of tensors copied. Raises :class:`CheckpointError` when the checkpoint's network is another
    architecture (weights missing or of another shape), naming a few of them.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} has no state_dict to take weights from")
    own = {k: v for k, v in module.state_dict().items() if k.startswith(prefix)}
    missing = [k for k in own if k not in state]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in state and state[k].shape != v.shape]
    if missing or mismatched:
        hp = ckpt.get("hyper_parameters", {})
        net = hp.get("net", {}) if isinstance(hp, dict) else {}
        stored = f"{hp.get('name', '?')} ({net.get('_target_', '?') if isinstance(net, dict) else '?'})"
        raise CheckpointError(
            f"checkpoint {path} holds network {stored}, which does not fit this model: "
            f"{len(missing)} weights missing (e.g. {missing[:3]}), {len(mismatched)} of another shape "
            f"(e.g. {mismatched[:3]}); fine-tune with the same model settings it was trained with"
        )
    module.load_state_dict({k: state[k] for k in own}, strict=False)
    return len(own)
