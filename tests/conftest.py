"""Shared fixtures (the helpers themselves live in tests/helpers.py), the tier markers of the
test folders (unit/, cli/, system/) and the environment of every test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

from src.config import setup_config_env  # noqa: E402
from src.data.io import write_tiff  # noqa: E402
from tests.helpers import blob_labels, grey_from_labels  # noqa: E402

setup_config_env()

TESTS = Path(__file__).resolve().parent
#: the marker of each tier folder (``-m cli``, ``-m system``, ``-m unit`` select one)
TIERS = {"unit": "unit", "cli": "cli", "system": "system"}


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        rel = Path(str(item.fspath)).resolve().relative_to(TESTS)
        if rel.parts and rel.parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, TIERS[rel.parts[0]]))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Folder with two 3D pairs ``vol{i}_image.tif``/``vol{i}_label.tif`` (40, 48, 48) and two
    2D pairs ``{i}.tif``/``{i}_label.tif`` (40, 56)."""
    root = tmp_path_factory.mktemp("tiny")
    for i in range(2):
        lab = blob_labels((40, 48, 48), seed=i)
        write_tiff(root / "3d" / f"vol{i}_image.tif", grey_from_labels(lab, i))
        write_tiff(root / "3d" / f"vol{i}_label.tif", lab)
        lab2 = blob_labels((40, 56), seed=10 + i)
        write_tiff(root / "2d" / f"{i}.tif", grey_from_labels(lab2, 10 + i))
        write_tiff(root / "2d" / f"{i}_label.tif", lab2)
    return root
