"""The serve modules form a DAG: no submodule imports the package ``slipway.serve`` itself, the lower
modules never import the higher ones, and there is no cycle (module- or function-level imports)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import slipway.serve

SERVE = Path(slipway.serve.__file__).parent
LOWER = {"limits", "tensors", "types", "request", "shm", "batcher", "sequence", "stats", "ensemble"}
HIGHER = {"model", "repository", "dataplane", "rest", "http", "asgi", "grpc", "metrics", "server"}


def _imports(path: Path) -> set[str]:
    """The slipway.serve modules ``path`` imports anywhere (``"__init__"`` for the package itself)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "slipway.serve":
                out.add("__init__")
            elif node.module.startswith("slipway.serve."):
                out.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[:2] == ["slipway", "serve"]:
                    out.add(parts[2] if len(parts) > 2 else "__init__")
    return out


def test_serve_modules_form_a_dag() -> None:
    graph = {p.stem: _imports(p) for p in SERVE.glob("*.py")}
    assert set(graph) == LOWER | HIGHER | {"__init__"}
    for name, deps in graph.items():
        if name != "__init__":
            assert "__init__" not in deps, f"{name} imports the package slipway.serve"
        if name in LOWER:
            assert not deps & HIGHER, f"lower module {name} imports {deps & HIGHER}"
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join(path + (name,))}"
        if name in done:
            return
        for dep in graph[name]:
            visit(dep, path + (name,))
        done.add(name)

    for name in graph:
        visit(name, ())


def test_importing_the_package_leaves_the_web_stack_for_later() -> None:
    """aiohttp and prometheus_client load when a server starts, not on ``import slipway.serve``."""
    code = ("import sys, slipway.serve; "
            "print(sorted(m for m in ('aiohttp', 'prometheus_client', 'uvloop', 'openvino') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
