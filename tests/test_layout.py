"""The house's shape, read from the source with `ast` (reads files only): who may import whom,
and that every service's `core/` stays pure.

Floors, bottom up: the common lib `basalt/` imports only itself; `basalt_tools/` (tiny model,
nats-server launcher) imports the common lib; each service under `services/` imports the common
lib and itself, never another service; `bench/` may import services and tools; `basalt_cli/`
(the `basalt` command, `basalt up`) sits on top and may import anything. Nothing imports
`basalt_cli`.

A module in a `core/` package does no I/O: it imports none of the modules in `CORE_DENIED`
(transport, event loop, clock, process, logging, engines), no common-lib adapter
(`CORE_DENIED_COMMON`), and no module of its own service outside a `core/` package (a core
never imports an adapter). Randomness comes in as a seeded generator: `from random import Random`
is the one import of `random` a core may make.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
FIRST_PARTY = ("basalt", "basalt_tools", "basalt_cli", "bench", "services")
# What each floor may import (first-party top-level packages); services are handled apart.
ALLOWED = {
    "basalt": {"basalt"},
    "basalt_tools": {"basalt", "basalt_tools"},
    "bench": {"basalt", "basalt_tools", "bench", "services"},
    "basalt_cli": set(FIRST_PARTY),
}
CORE_DENIED = frozenset({
    "asyncio", "concurrent", "datetime", "fastapi", "grpc", "grpc_health", "grpc_reflection",
    "httpx", "logging", "multiprocessing", "nats", "os", "prometheus_client", "secrets",
    "select", "selectors", "shutil", "signal", "socket", "starlette", "structlog", "subprocess",
    "tempfile", "tensorrt_llm", "threading", "time", "torch", "transformers", "uuid", "uvicorn",
    "vllm", "zmq",
})
CORE_DENIED_COMMON = frozenset({
    "basalt.bus", "basalt.config", "basalt.log", "basalt.metrics", "basalt.kserve.server",
})


@dataclass(frozen=True, slots=True)
class Import:
    module: str  # absolute dotted name (relative imports resolved)
    names: tuple[str, ...]  # for `from m import a, b`; () for `import m`
    lineno: int


def module_name(path: Path, root: Path) -> str:
    """`services/router/core/index.py` -> `services.router.core.index` (a package's `__init__`
    is the package)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports_of(path: Path, root: Path) -> list[Import]:
    """Every import in a module, relative ones resolved against its package."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[Import] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend(Import(a.name, (), node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            found.append(Import(base, tuple(a.name for a in node.names), node.lineno))
    return found


def _service(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "services" and len(parts) > 1 else None


def _in_core(module: str) -> bool:
    return "core" in module.split(".")


def layer_violations(root: Path) -> list[str]:
    """Imports that point up a floor or across services."""
    bad: list[str] = []
    for top in FIRST_PARTY:
        for path in sorted((root / top).rglob("*.py")):
            if "pb" in path.relative_to(root).parts[:2]:
                continue  # generated protobuf stubs
            me = module_name(path, root)
            for imp in imports_of(path, root):
                target_top = imp.module.split(".")[0]
                if target_top not in FIRST_PARTY:
                    continue
                where = f"{path.relative_to(root)}:{imp.lineno} imports {imp.module}"
                if top == "services":
                    mine, theirs = _service(me), _service(imp.module)
                    if target_top not in ("basalt", "services"):
                        bad.append(f"{where}: a service imports only the common lib and itself")
                    elif target_top == "services" and theirs is not None and theirs != mine:
                        bad.append(f"{where}: no import between services")
                elif target_top not in ALLOWED[top]:
                    bad.append(f"{where}: {top}/ may import only {sorted(ALLOWED[top])}")
    return bad


def core_violations(root: Path) -> list[str]:
    """Imports that would give a `core/` module I/O, a clock, randomness or an adapter."""
    bad: list[str] = []
    for path in sorted((root / "services").rglob("*.py")):
        me = module_name(path, root)
        if not _in_core(me):
            continue
        for imp in imports_of(path, root):
            where = f"{path.relative_to(root)}:{imp.lineno} imports {imp.module}"
            top = imp.module.split(".")[0]
            if top == "random":
                if imp.names != ("Random",):
                    bad.append(f"{where}: a core takes a seeded Random, never the global one")
            elif top in CORE_DENIED:
                bad.append(f"{where}: a core does no I/O and reads no clock")
            elif any(imp.module == m or imp.module.startswith(m + ".") for m in CORE_DENIED_COMMON):
                bad.append(f"{where}: a core uses no common-lib adapter")
            elif top == "services" and not _in_core(imp.module):
                # `from ..core import x` names a core package itself; anything else is an adapter
                bad.append(f"{where}: a core never imports an adapter")
            elif top == "basalt" and imp.module == "basalt":
                adapters = {m.rpartition(".")[2] for m in CORE_DENIED_COMMON if m.count(".") == 1}
                if set(imp.names) & adapters:
                    bad.append(f"{where}: a core uses no common-lib adapter")
    return bad


def test_every_service_has_a_core() -> None:
    services = sorted(p.parent.name for p in (REPO / "services").glob("*/main.py"))
    assert services, "no service with a main.py found"
    for name in services:
        assert (REPO / "services" / name / "core" / "__init__.py").is_file(), (
            f"services/{name} has no core/ package")


def test_no_import_points_up_or_across() -> None:
    assert layer_violations(REPO) == []


def test_cores_are_pure() -> None:
    assert core_violations(REPO) == []


def _write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    for parent in path.relative_to(root).parents:
        if str(parent) != ".":
            (root / parent / "__init__.py").touch()
    path.write_text(text)


@pytest.mark.parametrize(("rel", "text", "expect"), [
    ("basalt/x.py", "from services.router import main\n", "basalt/ may import only"),
    ("basalt/x.py", "import basalt_cli\n", "basalt/ may import only"),
    ("basalt_tools/x.py", "from bench import report\n", "basalt_tools/ may import only"),
    ("bench/x.py", "from basalt_cli import main\n", "bench/ may import only"),
    ("services/mcm/x.py", "from services.router.core import policy\n", "between services"),
    ("services/mcm/x.py", "from basalt_tools import natsserver\n", "only the common lib"),
])
def test_layer_check_catches(tmp_path: Path, rel: str, text: str, expect: str) -> None:
    _write(tmp_path, rel, text)
    found = layer_violations(tmp_path)
    assert len(found) == 1 and expect in found[0], found


@pytest.mark.parametrize(("text", "expect"), [
    ("import nats\n", "no I/O"),
    ("import time\n", "no I/O"),
    ("from asyncio import sleep\n", "no I/O"),
    ("import random\n", "seeded Random"),
    ("from random import random\n", "seeded Random"),
    ("from basalt.log import get_logger\n", "common-lib adapter"),
    ("from basalt import bus\n", "common-lib adapter"),
    ("from ..dispatch import Dispatcher\n", "never imports an adapter"),
    ("from services.router.watchers import x\n", "never imports an adapter"),
])
def test_core_check_catches(tmp_path: Path, text: str, expect: str) -> None:
    _write(tmp_path, "services/router/core/rule.py", text)
    found = core_violations(tmp_path)
    assert len(found) == 1 and expect in found[0], found


@pytest.mark.parametrize("text", [
    "from random import Random\n",
    "from . import index\nfrom .index import PrefixIndex\n",
    "from ..core.index import PrefixIndex\n",
    "from services.runtime.core.engine import Engine\n",
    "from basalt.pb import events_pb2\nfrom basalt import ids\nfrom basalt.ids import ReplicaId\n",
    "import math\nfrom dataclasses import dataclass\n",
])
def test_core_check_allows(tmp_path: Path, text: str) -> None:
    _write(tmp_path, "services/router/core/rule.py", text)
    assert core_violations(tmp_path) == []
