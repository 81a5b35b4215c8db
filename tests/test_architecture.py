"""The package's shape: imports go one way only, and methods touch the base only through hooks."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "adapter_bert"

# Lower levels never import higher ones (the package's __init__ files, which re-export, aside).
LEVELS = [
    ("adapter_bert.bert", "adapter_bert.io_utils", "adapter_bert.glue", "adapter_bert.testing",
     "adapter_bert.console", "adapter_bert.language_modeling"),
    ("adapter_bert.configuration",),
    ("adapter_bert.methods",),
    ("adapter_bert.composition", "adapter_bert.averaging", "adapter_bert.fusion",
     "adapter_bert.heads"),
    ("adapter_bert.model",),
    ("adapter_bert.formats", "adapter_bert.export", "adapter_bert.objectives",
     "adapter_bert.techniques"),
    ("adapter_bert.training", "adapter_bert.launch", "adapter_bert.command_flags",
     "adapter_bert.sweep"),
]


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every `adapter_bert` module a file imports, at the top or inside functions."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("adapter_bert"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if base.startswith("adapter_bert"):
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    found.add(candidate if _exists(candidate) else base)
    return {_owner(name) for name in found}


def _exists(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _owner(name: str) -> str:
    while not _exists(name):
        name = name.rsplit(".", 1)[0]
    return name


def _level(module: str) -> int:
    for index, prefixes in enumerate(LEVELS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return index
    raise AssertionError(f"{module} has no place in LEVELS; add it where it belongs")


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py" and path.parent in (PACKAGE, PACKAGE / "methods"):
            continue  # the facade re-exports; methods/__init__ imports its modules to register them
        graph[_module_name(path)] = _imports(path) - {_module_name(path)}
    return graph


def test_no_module_imports_a_higher_level():
    upward = [(module, target) for module, targets in _graph().items() for target in targets
              if target != "adapter_bert" and _level(target) > _level(module)]
    assert upward == [], "imports that go up a level: " + ", ".join(f"{a} -> {b}" for a, b in upward)


def test_there_is_no_import_circle():
    full = _graph()
    graph = {m: {t for t in targets if t in full} for m, targets in full.items()}
    visiting, done, cycles = set(), set(), []

    def visit(node, trail):
        if node in done:
            return
        if node in visiting:
            cycles.append(trail[trail.index(node):] + [node])
            return
        visiting.add(node)
        for target in sorted(graph.get(node, ())):
            visit(target, trail + [node])
        visiting.discard(node)
        done.add(node)

    for node in sorted(graph):
        visit(node, [])
    assert cycles == [], "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize("path", sorted((PACKAGE / "methods").glob("*.py")), ids=lambda p: p.name)
def test_methods_change_the_base_only_through_the_hook_api(path):
    """No method edits encoder attributes or hook registries directly."""
    text = path.read_text(encoding="utf-8")
    for forbidden in ("object.__setattr__", "_families", "._hooks", "attention_residual =",
                      "output_residual =", "_merged_by", ".hooks.append"):
        assert forbidden not in text, f"{path.name} uses {forbidden!r}"


def test_every_method_module_registers_itself_once():
    for path in sorted((PACKAGE / "methods").glob("*.py")):
        if path.name in ("__init__.py", "base.py", "registry.py"):
            continue
        assert path.read_text(encoding="utf-8").count("\nregister_method(") == 1, path.name


def test_the_long_files_scheduled_first_exist():
    """A renamed file would silently drop out of the schedule that keeps CI's tail short."""
    from conftest import LONG_FILES

    tests = Path(__file__).resolve().parent
    assert [name for name in LONG_FILES if not (tests / name).is_file()] == []
