"""The one loader of trained checkpoints (segmentation, reconstruction, XANES), with clear errors."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

import torch

from src.models.base import TaskModule, current_target
from src.models.reconstruction import ReconstructionModule
from src.models.segmentation import SegmentationModule
from src.models.spectral import XanesModule

log = logging.getLogger(__name__)


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


#: the task modules by the ``kind`` they write into their checkpoints
MODULES: dict[str, type[TaskModule]] = {
    SegmentationModule.kind: SegmentationModule,
    ReconstructionModule.kind: ReconstructionModule,
    XanesModule.kind: XanesModule,
}


def _net_target(hparams: dict[str, Any]) -> str:
    net = hparams.get("net") if isinstance(hparams, dict) else None
    return current_target(net.get("_target_", "")) if isinstance(net, dict) else ""


def _kind_of(ckpt: dict[str, Any]) -> str | None:
    """The ``kind`` a checkpoint stores, or the one its hyperparameters show.

    Older checkpoints (without one) show it by their hyperparameters: a reconstruction net,
    XANES ``task``/``scan_energies``, or phases.
    """
    if ckpt.get("kind") in MODULES:
        return ckpt["kind"]
    hparams = ckpt.get("hyper_parameters", {})
    if not isinstance(hparams, dict):
        return None
    if _net_target(hparams).startswith("src.models.nets.reconstruction."):
        return "reconstruction"
    if "scan_energies" in hparams and "task" in hparams:
        return "xanes"
    if "class_names" in hparams:
        return "segmentation"
    return None


def checkpoint_kind(path: str | Path) -> str:
    """The kind of the checkpoint at ``path``.

    Args:
        path: a checkpoint file.

    Returns:
        ``"segmentation"``, ``"reconstruction"`` or ``"xanes"``.

    Raises:
        CheckpointError: a missing or unreadable file, or not a checkpoint of this project.
    """
    path = Path(path)
    kind = _kind_of(read_checkpoint(path))
    if kind is None:
        raise CheckpointError(
            f"checkpoint {path} is not a segmentation or reconstruction checkpoint of this project "
            "(expected hyper_parameters with 'net' and 'class_names' and a state_dict)"
        )
    return kind


def load_checkpoint(
    path: str | Path, kind: str | None = None, expected_model: str | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[TaskModule, dict[str, Any]]:
    """Rebuild a trained task module from its checkpoint, today's or one of an older layout.

    Checkpoints saved before the layout of issue 14 load too (old net class paths map to the
    new ones).

    The module is built from its own ``__init__`` signature (the stored hyperparameters it
    accepts), its weights loaded strictly, and put in eval mode on ``map_location``.

    Args:
        path: the checkpoint file.
        kind: ``"segmentation"``, ``"reconstruction"`` or ``"xanes"`` to require one; None: any.
        expected_model: a model name (e.g. ``"lrcsnet"``) the checkpoint must hold, or None.
        map_location: device of the weights and the module.

    Returns:
        ``(module, data_hparams)``: the module and the data settings it was trained with
        (``datamodule_hyper_parameters``: normalisation, spatial dims, image size, ...).

    Raises:
        CheckpointError: the file does not exist, cannot be read, is not a checkpoint of
            this project or of ``kind``, holds another model than ``expected_model``, or its
            weights do not fit the stored network.
    """
    path = Path(path)
    ckpt = read_checkpoint(path, map_location)
    hparams = ckpt.get("hyper_parameters", {})
    found = _kind_of(ckpt)
    if kind is not None and kind not in MODULES:
        raise ValueError(f"unknown checkpoint kind {kind!r}; choose one of {sorted(MODULES)}")
    if "state_dict" not in ckpt or "net" not in hparams or found is None or (kind and found != kind):
        raise CheckpointError(f"checkpoint {path} is not a {NOT_A[kind or 'any']} of this project "
                              f"({EXPECTED[kind or 'any']}; model.net._target_ = {_net_target(hparams) or '?'})")
    name = hparams.get("name", "?")
    target = _net_target(hparams) or "?"
    if expected_model is not None and expected_model != name:
        raise CheckpointError(
            f"checkpoint {path} holds model '{name}' ({target}), but model_name={expected_model} was asked"
        )
    cls = MODULES[found]
    if isinstance(hparams["net"], dict) and "_target_" in hparams["net"]:  # a class that moved
        hparams = {**hparams, "net": {**hparams["net"], "_target_": target}}
    accepted = inspect.signature(cls.__init__).parameters
    try:
        module = cls(**{k: v for k, v in hparams.items() if k in accepted})
        module.load_state_dict(ckpt["state_dict"], strict=True)
    except (RuntimeError, TypeError) as err:
        raise CheckpointError(f"checkpoint {path}: weights do not fit model '{name}' ({target}): {err}") from err
    module.eval()
    return module.to(map_location), dict(ckpt.get("datamodule_hyper_parameters", {}))


NOT_A = {"segmentation": "segmentation checkpoint", "reconstruction": "learned-reconstruction checkpoint",
         "xanes": "XANES checkpoint", "any": "checkpoint"}
EXPECTED = {"segmentation": "expected hyper_parameters with 'net' and 'class_names' and a state_dict",
            "reconstruction": "expected a net of src.models.nets.reconstruction and a state_dict",
            "xanes": "expected hyper_parameters with 'net', 'task' and 'scan_energies' and a state_dict",
            "any": "expected hyper_parameters with 'net' and a state_dict"}


def load_segmentation_checkpoint(
    path: str | Path, expected_model: str | None = None, map_location: str | torch.device = "cpu",
) -> tuple[SegmentationModule, dict[str, Any]]:
    """:func:`load_checkpoint` of a segmentation checkpoint (see there)."""
    return load_checkpoint(path, "segmentation", expected_model, map_location)  # type: ignore[return-value]


def load_reconstruction_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu",
) -> tuple[ReconstructionModule, dict[str, Any]]:
    """:func:`load_checkpoint` of a learned-reconstruction checkpoint (see there)."""
    return load_checkpoint(path, "reconstruction", None, map_location)  # type: ignore[return-value]


def load_xanes_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu",
) -> tuple[XanesModule, dict[str, Any]]:
    """:func:`load_checkpoint` of a XANES checkpoint (denoiser or edge-energy net; see there)."""
    return load_checkpoint(path, "xanes", None, map_location)  # type: ignore[return-value]


def load_pretrained_weights(module: torch.nn.Module, path: str | Path, prefix: str = "net.",
                            reinit_head: bool = False) -> int:
    """Start ``module`` from the network weights of checkpoint ``path`` (fine-tuning).

    Only the parameters and buffers under ``prefix`` are copied; optimizer, epoch and learning
    rate schedule start fresh (use ``ckpt_path=`` to *resume* a run instead). Returns the number
    of tensors copied. Raises :class:`CheckpointError` when the checkpoint's network is another
    architecture (weights missing or of another shape), naming a few of them, and when the
    module's ``class_names`` (e.g. the phases of scribbles) are not the checkpoint's, unless
    ``reinit_head``: then the output layer (the last weight and bias with one output per class,
    and any tensor of another shape) keeps its fresh initialisation.
    """
    path = Path(path)
    ckpt = read_checkpoint(path)
    state = ckpt.get("state_dict")
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} has no state_dict to take weights from")
    own = {k: v for k, v in module.state_dict().items() if k.startswith(prefix)}
    hp = ckpt.get("hyper_parameters", {})
    stored_classes = list(hp.get("class_names") or []) if isinstance(hp, dict) else []
    classes = list(getattr(module, "class_names", None) or [])
    if stored_classes and classes and stored_classes != classes:
        if not reinit_head:
            unseen = [c for c in classes if c not in stored_classes]
            raise CheckpointError(
                f"the labels name classes {classes}, but checkpoint {path} was trained for {stored_classes}"
                + (f": {unseen} never seen by it" if unseen else " (another order)")
                + "; relabel to its classes, or pass reinit_head=true to re-initialise its output layer")
        heads = [k for k, v in own.items() if v.ndim >= 1 and v.shape[0] == len(classes)
                 and (k not in state or state[k].shape != v.shape or k.endswith(("weight", "bias")))]
        skip = set(heads[-2:]) | {k for k, v in own.items() if k in state and state[k].shape != v.shape}
        log.info("reinit_head: %s keep their fresh initialisation (classes %s -> %s)", sorted(skip),
                 stored_classes, classes)
        own = {k: v for k, v in own.items() if k not in skip}
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


def use_checkpoint_net(cfg: Any) -> None:
    """Make a run's model config rebuild its ``init_from`` checkpoint's net (``net_from_init=true``).

    Sets ``cfg.model.net`` to the stored network config (``_target_`` updated for moved classes,
    ``num_classes``/``out_channels`` sized for ``cfg.data.class_names``) and ``cfg.model.name`` to
    the stored model name, so the new checkpoint names the net it holds.

    Args:
        cfg: a composed train config (an omegaconf ``DictConfig``) with ``init_from`` set; changed in place.

    Raises:
        CheckpointError: the checkpoint stores no network config to rebuild.
    """
    from omegaconf import OmegaConf

    path = Path(cfg.init_from)
    hp = read_checkpoint(path).get("hyper_parameters", {})
    hp = hp if isinstance(hp, dict) else {}
    net = hp.get("net")
    if not isinstance(net, dict) or "_target_" not in net:
        raise CheckpointError(f"checkpoint {path} stores no network config (hyper_parameters.net) to rebuild")
    net = {**net, "_target_": current_target(net["_target_"])}
    for key in ("num_classes", "out_channels"):
        if key in net:
            net[key] = len(cfg.data.class_names)
    cfg.model.net = OmegaConf.create(net)
    if hp.get("name") and "name" in cfg.model:
        cfg.model.name = str(hp["name"])
