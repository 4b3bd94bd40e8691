"""End-member spectra shipped with the package, and how the command names end-members.

The two Ni K-edge end-members ``ref_NiO.txt`` (Ni²⁺) and ``ref_LiNiO2.txt`` (Ni³⁺) of pyxas
(BSD licence, ``LICENSE-pyxas.txt`` beside them) are package data of :mod:`src.xanes` (folder
``src/xanes/data/``), found through :mod:`importlib.resources`, so a fresh install (also a
non-editable wheel) has them. In ``conf/xanes.yaml`` an end-member is a path or
``builtin:<file>`` (one of :data:`BUILTIN_REFERENCES`); ``references: from_data`` derives the
end-members from the stack itself (:func:`src.xanes.end_members.end_members_from_data`).
"""

from __future__ import annotations

import contextlib
from importlib import resources
from pathlib import Path

__all__ = ["BUILTIN_PREFIX", "BUILTIN_REFERENCES", "builtin_reference_dir", "resolve_reference"]

BUILTIN_PREFIX = "builtin:"
#: the shipped end-member spectra (two columns: energy in keV, normalised absorption)
BUILTIN_REFERENCES = ("ref_NiO.txt", "ref_LiNiO2.txt")
_stack = contextlib.ExitStack()


def builtin_reference_dir() -> Path:
    """The folder holding the shipped end-member spectra and their licence.

    A real folder, also when the package is installed as a zip: then it is extracted once per
    process.
    """
    folder = resources.files("src.xanes") / "data"
    return Path(_stack.enter_context(resources.as_file(folder)))


def resolve_reference(spec: str | Path) -> Path:
    """The file of an end-member given as a path or ``builtin:<name>``.

    Args:
        spec: a path, or ``builtin:ref_NiO.txt`` / ``builtin:ref_LiNiO2.txt`` (the ``.txt`` may be
            left out).

    Returns:
        The existing file.

    Raises:
        FileNotFoundError: naming the file (or the shipped names) when it does not exist.
    """
    text = str(spec)
    if text.startswith(BUILTIN_PREFIX):
        name = text[len(BUILTIN_PREFIX):]
        name = name if name.endswith(".txt") else f"{name}.txt"
        if name not in BUILTIN_REFERENCES:
            raise FileNotFoundError(f"references: {text!r} is not a shipped end-member; shipped: "
                                    f"{[BUILTIN_PREFIX + n for n in BUILTIN_REFERENCES]}")
        path = builtin_reference_dir() / name
    else:
        path = Path(text)
    if not path.is_file():
        raise FileNotFoundError(f"references: end-member spectrum {path} not found (a two-column "
                                f"file energy, absorption, or one of "
                                f"{[BUILTIN_PREFIX + n for n in BUILTIN_REFERENCES]})")
    return path
