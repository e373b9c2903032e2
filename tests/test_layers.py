"""The layers of the tree, checked from the source: no import cycles, no private names across modules,
and each layer importing only what lies below it (docs/architecture.md draws them).

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a cycle that
only type checkers see is still a cycle a reader has to untangle.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The modules every layer may use: errors, results and the small vocabularies they share.
FOUNDATION = {"keyvault.errors", "keyvault.results", "keyvault.clock", "keyvault.fields", "keyvault.vocabulary",
              "keyvault.files"}
#: What each layer may import besides itself and the foundation (prefixes of module names).
ALLOWED = {
    "foundation": (),
    "keyvault._fast": (),
    "keyvault.formats": ("keyvault._fast",),
    "keyvault.store": ("keyvault._fast", "keyvault.formats"),
    "keyvault.engine": ("keyvault._fast", "keyvault.formats", "keyvault.store"),
    "keyvault.vault": ("keyvault.engine", "keyvault.formats"),
    "keyvault": ("keyvault.engine", "keyvault.formats", "keyvault.vault"),  # the package's public names
    # The interfaces: public names only, never the hot path, the store or the engine's modules.
    "keyvault.service": ("keyvault", "keyvault.formats", "keyvault.engine"),
    "keyvault.cli": ("keyvault", "keyvault.formats", "keyvault.engine", "keyvault.service"),
}


def _module_files() -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted((ROOT / "keyvault").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    for path in sorted((ROOT / "cli").glob("*.py")):
        name = path.stem
        files["keyvault.cli" + ("" if name == "__init__" else "." + name)] = path
    return files


MODULES = _module_files()


def _imports(name: str, path: Path) -> list[tuple[str, str, int]]:
    """(imported module, imported name or "", line) for every import of a keyvault module in ``path``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names if alias.name.startswith("keyvault")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not source.startswith("keyvault"):
                continue
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in MODULES:  # `from package import module`
                    found.append((sub, "", node.lineno))
                else:
                    found.append((source, alias.name, node.lineno))
    return found


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(name: str) -> str:
    if name in FOUNDATION:
        return "foundation"
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if layer != "foundation" and (name == layer or name.startswith(layer + ".")):
            return layer
    raise AssertionError(f"{name} belongs to no layer: add it to ALLOWED in this test and to docs/architecture.md")


def test_every_module_is_seen() -> None:
    assert {"keyvault.vault", "keyvault.engine.engine", "keyvault.formats.manifest", "keyvault.store.records",
            "keyvault._fast._pure", "keyvault.service.app", "keyvault.cli.main"} <= set(MODULES)
    assert any(target == "keyvault.engine.state" for target, _, _ in GRAPH["keyvault.engine.engine"])


def test_no_import_cycles() -> None:
    edges = {name: sorted({target for target, _, _ in imports if target in MODULES and target != name})
             for name, imports in GRAPH.items()}
    # A package's __init__ runs before its modules, so `from . import x` inside the package is an edge to it.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # Tarjan's strongly connected components
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in edges:
        if name not in index:
            visit(name)
    assert cycles == []


def test_no_private_name_crosses_a_module() -> None:
    crossings = []
    for name, imports in GRAPH.items():
        for target, imported, line in imports:
            private = [part for part in (target.split(".") + [imported]) if part.startswith("_")
                       and not part.startswith("__")]
            if not private:
                continue
            inside_fast = name.startswith("keyvault._fast") and target.startswith("keyvault._fast")
            fast_layer = target == "keyvault._fast" and not imported.startswith("_")  # the hot path, by its package
            if inside_fast or (fast_layer and _layer(name) not in ("keyvault.service", "keyvault.cli")):
                continue
            crossings.append(f"{MODULES[name].relative_to(ROOT)}:{line} imports {target} {imported}".rstrip())
    assert crossings == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_each_layer_imports_only_downward(name: str) -> None:
    layer = _layer(name)
    allowed = ALLOWED[layer] + (layer,) if layer != "foundation" else ()
    wrong = []
    for target, imported, line in GRAPH[name]:
        if target in FOUNDATION:
            continue
        if target == "keyvault" and layer in ("keyvault.service", "keyvault.cli"):
            continue  # the package's public names
        ok = any(target == prefix or target.startswith(prefix + ".") for prefix in allowed)
        if layer in ("keyvault.service", "keyvault.cli") and target.startswith("keyvault.engine."):
            ok = False  # the engine's public names come from the package, not its modules
        if layer == "keyvault" and target.startswith("keyvault.") and target.count(".") > 1:
            ok = target.startswith(("keyvault.engine", "keyvault.formats"))
        if not ok:
            wrong.append(f"line {line}: {target} {imported}".rstrip())
    assert wrong == [], f"{name} ({layer}) reaches outside its layer"


def test_uvicorn_is_bounded_to_the_releases_whose_protocol_the_guard_subclasses() -> None:
    """keyvault/service/protocol.py subclasses uvicorn's httptools protocol (not a public API): every place
    that installs uvicorn names the same upper bound, and the uvicorn installed here lies within it."""
    import re
    from importlib.metadata import version

    from packaging.specifiers import SpecifierSet

    found = {}
    for name in ("pyproject.toml", "requirements-dev.txt"):
        specs = re.findall(r"uvicorn([<>=!~][^\"\s#,]*(?:,[<>=!~][^\"\s#,]*)*)", (ROOT / name).read_text())
        assert len(specs) == 1, f"{name} names uvicorn {len(specs)} times"
        found[name] = SpecifierSet(specs[0])
    assert len(set(found.values())) == 1, found
    spec = next(iter(found.values()))
    assert any(s.operator in ("<", "<=", "~=", "==") for s in spec), f"uvicorn{spec} has no upper bound"
    assert version("uvicorn") in spec, f"uvicorn {version('uvicorn')} is outside uvicorn{spec}"
