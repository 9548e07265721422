"""The package layout is the architecture: imports go one way and never reach private names.

Layers, bottom to top (a module may import from its own layer and the layers below):

    0  surgery._errors, _boundary, _hints    the exception tree, the error boundary, hints
    1  surgery.paths                          the grammar, resolving paths against a model
    2  surgery.trace                          meta copies, tracing, cut/split, compose, verify, tree
    3  surgery.edit                           the plan -> commit engine and the in-place edits
    4  surgery.train, surgery.checkpoint      freezing, groups, caches; checkpoint I/O (independent)
    5  surgery.cli                            the command line
    6  surgery (the package), surgery.testing, surgery.layers, surgery.__main__   public modules

These tests read the source with :mod:`ast`, so they see imports inside functions too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "surgery"

LAYERS = {
    "surgery._errors": 0,
    "surgery._boundary": 0,
    "surgery._hints": 0,
    "surgery._version": 0,
    "surgery.paths": 1,
    "surgery.trace": 2,
    "surgery.edit": 3,
    "surgery.train": 4,
    "surgery.checkpoint": 4,
    "surgery.cli": 5,
}
INDEPENDENT = {frozenset({"surgery.train", "surgery.checkpoint"})}
# where import_module resolves a user's model spec ("torchvision.models:resnet18"), not our own code
USER_SPECS = {"surgery.cli._spec"}


def _modules() -> dict[str, Path]:
    found = {}
    for file in ROOT.rglob("*.py"):
        parts = list(file.relative_to(ROOT.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = file
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> list[tuple[str, list[str], int]]:
    """(imported module, imported names, line) for every import in the module, nested ones too."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    package = name if _is_package(name) else name.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            names = [a.name for a in node.names]
            if target.startswith("surgery"):
                # `from . import _load` imports a module, not a name
                subs = [n for n in names if f"{target}.{n}" in MODULES]
                for n in subs:
                    found.append((f"{target}.{n}", [], node.lineno))
                rest = [n for n in names if n not in subs]
                if rest or not subs:
                    found.append((target, rest, node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("surgery"):
                    found.append((a.name, [], node.lineno))
        elif (
            isinstance(node, ast.Call)
            and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
        ):
            found.append(("<import_module>", [], node.lineno))
    return found


def _layer(name: str) -> tuple[str, int]:
    for prefix, level in sorted(LAYERS.items(), key=lambda kv: -len(kv[0])):
        if name == prefix or name.startswith(prefix + "."):
            return prefix, level
    return "surgery", 6


def test_no_import_module_tricks() -> None:
    bad = [f"{m}:{line}" for m in MODULES for t, _, line in _imports(m) if t == "<import_module>"]
    # the CLI resolves user model specs ("torchvision.models:resnet18") with import_module
    bad = [b for b in bad if b.partition(":")[0] not in USER_SPECS]
    assert not bad, f"import_module hides an import edge: {bad}"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_go_one_way(name: str) -> None:
    here, level = _layer(name)
    for target, _, line in _imports(name):
        if target == "<import_module>" or target not in MODULES:
            continue
        there, their_level = _layer(target)
        if there == here:
            continue
        assert their_level <= level, (
            f"{name}:{line} imports {target} ({there}, layer {their_level}) from layer {level}"
        )
        assert frozenset({here, there}) not in INDEPENDENT, (
            f"{name}:{line} imports {target}: {here} and {there} are independent"
        )


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_private_names_from_other_modules(name: str) -> None:
    for target, names, line in _imports(name):
        if target in (name, "<import_module>"):
            continue
        private = [n for n in names if n.startswith("_") and not n.startswith("__")]
        assert not private, f"{name}:{line} imports private {private} from {target}"


def test_no_import_cycles() -> None:
    graph = {
        m: {t for t, _, _ in _imports(m) if t in MODULES and t != m and t != "surgery"}
        for m in MODULES
    }
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"
