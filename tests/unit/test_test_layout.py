"""The tests themselves: in tiers (unit/<room>/, cli/, system/), sharing helpers only through
tests/helpers.py (no test file imports another test file or conftest)."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _imported(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    return names | {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}


def test_no_test_file_imports_another_or_conftest():
    bad = []
    for path in sorted(TESTS.rglob("*.py")):
        for name in _imported(path):
            last = name.split(".")[-1]
            if name.startswith("tests.") and (last == "conftest" or last.startswith("test_")) or name == "conftest":
                bad.append(f"{path.relative_to(TESTS)} imports {name}")
    assert not bad, "\n".join(bad)


def test_test_files_sit_in_a_tier():
    loose = [p.name for p in TESTS.glob("test_*.py")]
    assert not loose, f"test files outside unit/, cli/, system/: {loose}"
    for path in TESTS.rglob("test_*.py"):
        tier = path.relative_to(TESTS).parts[0]
        assert tier in ("unit", "cli", "system"), path
