"""Every package says what it exports (reads files only, as httpx's tests/test_exported_members.py).

For each package of basalt's own: its `__init__.py` assigns `__all__` a list of strings; each
entry is bound in the `__init__` (defined or imported there) or is a submodule of the package;
and every public name the `__init__` binds is listed. Read with `ast`, not by importing, so that
no engine (vLLM, TensorRT-LLM) is loaded and basalt.pb.kserve_pb2 never meets tritonclient.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROOTS = ("basalt", "basalt_cli", "basalt_tools", "bench", "services")


def _packages() -> list[Path]:
    found: list[Path] = []
    for root in ROOTS:
        found.extend(sorted((REPO / root).rglob("__init__.py")))
    return [p for p in found if "__pycache__" not in p.parts]


def declared_all(tree: ast.Module) -> list[str] | None:
    for node in tree.body:
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        if node_value(node) is not None and any(
                isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
            value = ast.literal_eval(node_value(node))
            assert isinstance(value, list | tuple), "__all__ must be a list of names"
            return [str(v) for v in value]
    return None


def node_value(node: ast.stmt) -> ast.expr | None:
    return node.value if isinstance(node, ast.Assign | ast.AnnAssign) else None


def bound_names(tree: ast.Module) -> set[str]:
    """Names a module binds at top level (defs, classes, assignments, imports)."""
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom):
            names.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.Import):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names - {"__all__", "annotations"}


def submodules(package: Path) -> set[str]:
    here = package.parent
    mods = {p.stem for p in here.glob("*.py") if p.name != "__init__.py"}
    mods |= {p.name for p in here.iterdir() if (p / "__init__.py").is_file()}
    return mods


@pytest.mark.parametrize("init", _packages(), ids=lambda p: str(p.parent.relative_to(REPO)))
def test_package_declares_its_exports(init: Path) -> None:
    tree = ast.parse(init.read_text())
    exported = declared_all(tree)
    assert exported is not None, f"{init.relative_to(REPO)} has no __all__"
    assert len(exported) == len(set(exported)), f"duplicates in __all__: {exported}"
    bound = bound_names(tree)
    unknown = set(exported) - bound - submodules(init)
    assert not unknown, f"__all__ names what the package does not have: {sorted(unknown)}"
    unlisted = {n for n in bound if not n.startswith("_")} - set(exported)
    # `from __future__ import annotations` binds nothing public; plain `import x` of a
    # submodule binds the package name, which is listed as a submodule when exported.
    assert not unlisted, f"public names missing from __all__: {sorted(unlisted)}"
