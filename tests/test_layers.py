"""The tree's layers: imports point one way (docs/architecture.md, "Layers").

Worker: comfy.errors/comfy.settings/comfy.deadline/comfy.volume_lock < comfy.nodes < comfy.server < comfy.media
< comfy.models < comfy.delivery < comfy.job < comfy.worker < handler.py. Queue side: the shared modules of supabase_sync < the scaler
< the workflow templates < the dispatcher. The two programs never import each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.comfy_env import ROOT

WORKER_RANK = {"comfy": 0, "comfy.errors": 0, "comfy.settings": 0, "comfy.deadline": 0, "comfy.volume_lock": 0,
               "comfy.nodes": 1,
               "comfy.server": 2, "comfy.media": 3, "comfy.models": 4, "comfy.delivery": 5, "comfy.job": 6,
               "comfy.worker": 7, "handler": 8}
QUEUE_BASE = {"config", "store", "runpod_api", "metrics", "migrations", "webhooks", "output_refs", "database"}
QUEUE_RANK = {"scaler": 1, "templates": 2}  # every other module of supabase_sync is the dispatcher (3)


def _rank(module: str) -> tuple[str, int] | None:
    if module == "handler" or module.startswith("comfy"):
        for prefix in sorted(WORKER_RANK, key=len, reverse=True):
            if module == prefix or (prefix != "comfy" and module.startswith(prefix + ".")):
                return "worker", WORKER_RANK[prefix]
        return "worker", -1  # a new top-level module of comfy/: must be placed in a layer
    if module.startswith("supabase_sync"):
        parts = module.split(".")
        if len(parts) == 1 or parts[1] in QUEUE_BASE or parts[1] == "sql":
            return "queue", 0
        return "queue", QUEUE_RANK.get(parts[1], 3)
    return None


def _modules() -> list[tuple[str, Path]]:
    found = [("handler", ROOT / "handler.py")]
    for package in ("comfy", "supabase_sync"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found.append((".".join(parts), path))
    return found


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):  # function-level imports count too
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_imports_point_down(module: str, path: Path) -> None:
    own = _rank(module)
    assert own is not None and own[1] >= 0, f"{module} is in no layer: add it to tests/test_layers.py and the docs"
    for imported in _imports(path):
        other = _rank(imported)
        if other is None:
            continue
        assert other[0] == own[0], f"{module} imports {imported}: the worker and the dispatcher stay apart"
        assert other[1] <= own[1], f"{module} (layer {own[1]}) imports {imported} (layer {other[1]}), a higher layer"
