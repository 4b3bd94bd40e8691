"""The rooms of ``src/`` import one way only (ground floor first), with no circles between rooms
or between files, and the pure-torch nets never import Lightning.

Every ``import``/``from ... import`` under ``src/`` counts, also those inside functions (a lazy
import is still a dependency); only imports under ``if TYPE_CHECKING:`` (annotations) do not.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"

#: the rooms, ground floor first: a module belongs to the room of its longest matching prefix,
#: and a room may import itself and the rooms before it, never one after it
ROOMS = [
    "src.config",           # config composition and plain containers
    "src.data.transforms",  # normalisation and augmentation of arrays
    "src.data.io",          # readers/writers: images, volumes, spectra, projections, labels, figures
    "src.analysis",         # metrics, baselines, morphology, particles, transport, evolution statistics
    "src.xanes",            # edge analysis, maps, alignment, reference loop
    "src.recon",            # operators, FBP/iterative, preprocessing, centre, backends
    "src.simulation",       # microstructure, TXM imaging, evolution series, XANES scans, sinograms
    "src.data",             # datasets, DataModules, data sources
    "src.models",           # nets/ (pure torch), LightningModules, checkpoint loader
    "src.inference",        # sliding window, tiled/out-of-core, volume prediction
    "src.training",         # callbacks, tracking, sweeps, run comparison
    "src.cli",              # the commands' shared plumbing
    "src.gui",              # the napari plugin (optional extra [gui])
]


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def all_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(SRC.rglob("*.py"))}


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The ``src`` modules ``path`` imports (a ``from pkg import name`` of a submodule counts
    as an import of that submodule)."""
    tree = ast.parse(path.read_text(), str(path))
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        else:
            continue
        if _type_checking_only(node, parents):
            continue
        found |= {n for n in names if n == "src" or n.startswith("src.")}
    return found


def room_of(module: str) -> str:
    matches = [r for r in ROOMS if module == r or module.startswith(r + ".")]
    assert matches, f"{module} is in no room of ROOMS; add it to the layout"
    return max(matches, key=len)


def graph() -> dict[str, set[str]]:
    modules = all_modules()
    return {name: {m for m in imports_of(path, modules) if m in modules and m != name}
            for name, path in modules.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One circle of ``edges`` as a list of nodes (first == last), or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_every_module_has_a_room():
    for name in all_modules():
        if name != "src":
            room_of(name)


def test_rooms_import_downwards_only():
    order = {room: i for i, room in enumerate(ROOMS)}
    upward = sorted(f"{a} ({room_of(a)}) imports {b} ({room_of(b)})"
                    for a, targets in graph().items() if a != "src" for b in targets
                    if b != "src" and order[room_of(b)] > order[room_of(a)])
    assert not upward, "imports pointing up:\n" + "\n".join(upward)


def test_no_circles_between_rooms():
    rooms: dict[str, set[str]] = {}
    for a, targets in graph().items():
        if a != "src":
            rooms.setdefault(room_of(a), set()).update(room_of(b) for b in targets if b != "src")
    rooms = {r: t - {r} for r, t in rooms.items()}
    assert find_cycle(rooms) is None, find_cycle(rooms)


def test_no_circles_between_files():
    assert find_cycle(graph()) is None, " -> ".join(find_cycle(graph()) or [])


def test_nets_are_pure_torch():
    for path in sorted((SRC / "models" / "nets").glob("*.py")):
        tree = ast.parse(path.read_text())
        names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        lightning = sorted(n for n in names if n.split(".")[0] in ("pytorch_lightning", "lightning"))
        assert not lightning, f"{path.name} imports {lightning}"


def test_the_checker_finds_circles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
