"""The import graph of the suite runs one way (issue #10), read from the source with ``ast``.

Floors, bottom to top; a module imports only from its own package and from lower floors:

    datamodules  ->  lightning_modules.{nets, dsp, evaluation}  ->  lightning_modules.separators
    ->  lightning_modules.cli  ->  lightning_modules.inference  ->  sweeps

Every import counts, also those inside functions (a lazy import still makes a circle, e.g. the
former export <-> runtime one), except those under ``if TYPE_CHECKING:``, which never run. The
``lightning_modules`` package ``__init__`` is the facade that lends the separators' classes
their class paths (``lightning_modules.SpectrogramSeparator``, lazily), so it has no floor.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("datamodules", "lightning_modules", "sweeps")

#: Package (or module) prefix -> floor. The most specific prefix wins.
FLOORS = {
    "datamodules": 0,
    "lightning_modules.nets": 1,
    "lightning_modules.dsp": 1,
    "lightning_modules.evaluation": 1,
    "lightning_modules.separators": 2,
    "lightning_modules.cli": 3,
    "lightning_modules.__main__": 4,  # ``python -m lightning_modules``: runs the CLI
    "lightning_modules.inference": 4,
    "sweeps": 5,
}
FACADES = {"lightning_modules"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    return {
        _module_name(path): path
        for package in PACKAGES
        for path in sorted((REPO / package).rglob("*.py"))
    }


MODULES = _sources()


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(node: ast.AST, module: str) -> list[str]:
    """The suite's modules an import statement names: ``from a.b import c`` is the module
    ``a.b.c`` where that exists, else ``a.b``."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:  # relative: resolved against this module's package
            package = module.split(".")
            package = package[: len(package) - node.level + (module in _packages())]
            base = ".".join([*package, *([node.module] if node.module else [])])
        else:
            base = node.module or ""
        names = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base
            for alias in node.names
        ]
    else:
        return []
    return [name for name in names if name.split(".")[0] in PACKAGES]


def _packages() -> set[str]:
    return {name for name, path in MODULES.items() if path.name == "__init__.py"}


def imports(module: str) -> set[str]:
    """Every suite module ``module`` imports, at any depth of its code, but not for typing."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        found.update(_imported(node, module))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    found.discard(module)
    unknown = {name for name in found if name not in MODULES}
    assert not unknown, f"{module} imports {unknown}, which the walk cannot find"
    return found


GRAPH = {module: imports(module) for module in MODULES}


def floor(module: str) -> int | None:
    if module in FACADES:
        return None
    matches = [p for p in FLOORS if module == p or module.startswith(p + ".")]
    assert matches, f"{module} is on no floor: add its package to FLOORS (tests/test_layout.py)"
    return FLOORS[max(matches, key=len)]


def _package_of(module: str) -> str:
    return max((p for p in FLOORS if module == p or module.startswith(p + ".")), key=len)


def test_the_walk_sees_the_suite() -> None:
    assert "lightning_modules.separators.spectrogram" in GRAPH
    assert "datamodules.conventions" in GRAPH["lightning_modules.separators.spectrogram"]
    # a function-level import counts (stream reads audio files only when asked to)
    assert "lightning_modules.inference.audio" in GRAPH["lightning_modules.inference.stream"]


def test_datamodules_import_neither_models_nor_sweeps() -> None:
    wrong = {
        module: sorted(n for n in names if n.split(".")[0] != "datamodules")
        for module, names in GRAPH.items()
        if module.split(".")[0] == "datamodules"
    }
    assert not {m: n for m, n in wrong.items() if n}


def test_lightning_modules_import_nothing_of_sweeps() -> None:
    wrong = {
        module: sorted(n for n in names if n.split(".")[0] == "sweeps")
        for module, names in GRAPH.items()
        if module.split(".")[0] == "lightning_modules"
    }
    assert not {m: n for m, n in wrong.items() if n}


def test_every_import_goes_down_or_stays_in_its_package() -> None:
    """A module imports from its own package or from a lower floor; the packages of one floor
    (nets, dsp, evaluation) do not import each other."""
    wrong = []
    for module, names in GRAPH.items():
        if floor(module) is None:
            continue
        for name in names:
            if floor(name) is None:
                wrong.append(f"{module} -> {name} (the facade: import the defining module)")
            elif floor(name) > floor(module) or (
                floor(name) == floor(module) and _package_of(name) != _package_of(module)
            ):
                wrong.append(f"{module} (floor {floor(module)}) -> {name} (floor {floor(name)})")
    assert not wrong, "imports against the layering:\n" + "\n".join(wrong)


def _cycle() -> list[str] | None:
    """One import cycle of ``GRAPH``, or None (depth-first search, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module], _ = 1, path.append(module)
        for name in sorted(GRAPH[module]):
            if state.get(name) == 1:
                return [*path[path.index(name) :], name]
            if name not in state and (found := visit(name)):
                return found
        state[module], _ = 2, path.pop()
        return None

    for module in sorted(GRAPH):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_cycle() -> None:
    cycle = _cycle()
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    "graph, expected",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
    ],
)
def test_the_cycle_search(
    graph: dict[str, set[str]], expected: list[str] | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(f"{__name__}.GRAPH", graph)
    assert _cycle() == expected
