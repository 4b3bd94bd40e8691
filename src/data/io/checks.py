"""Checks of the paths a command is given, made before any work (one layer for every command).

Each check raises one clear error naming the config key, the path and what was expected.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

__all__ = ["check_output_dir", "check_output_file"]


def _writable_parent(path: Path, key: str) -> None:
    parent = path
    while not parent.exists():  # the first existing ancestor must let us create the rest
        parent = parent.parent
    if not parent.is_dir():
        raise NotADirectoryError(f"{key}={path}: {parent} is a file, so the folder cannot be created")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise PermissionError(f"{key}={path}: {parent} is not writable")


def check_output_dir(path: str | os.PathLike[str], key: str = "output_dir") -> Path:
    """``path`` can be used as an output folder: a folder, or creatable and writable.

    Args:
        path: the folder.
        key: the config key, for the message.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{key}={path} is an existing file; expected a folder (or a new path)")
    _writable_parent(path, key)
    return path


def check_output_file(
    path: str | os.PathLike[str], key: str = "output", inputs: Iterable[str | os.PathLike[str]] = (),
    overwrite: bool = True,
) -> Path:
    """Check that ``path`` can be written as an output file.

    Not a folder, not one of the ``inputs``, its folder creatable and writable, and (without
    ``overwrite``) not existing yet.

    Args:
        path: the output file.
        key: the config key, for the message.
        inputs: the command's input files; writing over one of them is refused.
        overwrite: whether an existing output may be replaced.

    Returns:
        ``path`` as a Path.
    """
    path = Path(path)
    if path.is_dir() and path.suffix.lower() != ".zarr":
        raise IsADirectoryError(f"{key}={path} is an existing folder; expected a file name")
    for item in inputs:
        if Path(item).exists() and path.exists() and os.path.samefile(item, path):
            raise ValueError(f"{key}={path} is also the input {item}: writing would destroy it; "
                             "choose another output")
        if Path(item).resolve() == path.resolve():
            raise ValueError(f"{key}={path} is also the input {item}: choose another output")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{key}={path} exists; pass overwrite=true to replace it")
    _writable_parent(path.parent, key)
    return path
