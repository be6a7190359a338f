"""The import graph of ``relbench.metrics`` has no cycle, lazy (in-function) imports included.

A cycle hidden behind an in-function import works until someone moves that import to the top
of the file; ``clip`` <-> ``embedding_cache`` (for ``image_digest``) was one. Read from the source
with ``ast``, so no module (or torch) is imported.
"""

from __future__ import annotations

import ast
from pathlib import Path

METRICS = Path(__file__).resolve().parents[1] / "metrics"


def _module_name(path: Path, folder: Path) -> str:
    parts = path.relative_to(folder).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(("relbench", "metrics", *parts))


def import_graph(folder: Path = METRICS) -> dict[str, set[str]]:
    """Module -> the ``relbench.metrics`` modules it imports anywhere in its file."""
    modules = {_module_name(path, folder): path for path in folder.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: drop level - 1 trailing parts of the package
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets.add(base)
                targets.update(f"{base}.{alias.name}" for alias in node.names)  # from pkg import submodule
        graph[name] = {target for target in targets if target in modules and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        path.append(node)
        for target in sorted(graph[node]):
            cycle = visit(target)
            if cycle is not None:
                return cycle
        path.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = visit(start)
        if cycle is not None:
            return cycle
    return None


def test_find_cycle_sees_a_lazy_cycle(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from relbench.metrics.b import x\n")
    (tmp_path / "b.py").write_text("def f():\n    from relbench.metrics.a import y\n")
    (tmp_path / "c.py").write_text("from relbench.metrics import a\n")
    graph = import_graph(tmp_path)
    assert graph == {"relbench.metrics.a": {"relbench.metrics.b"}, "relbench.metrics.b": {"relbench.metrics.a"},
                     "relbench.metrics.c": {"relbench.metrics.a"}}
    assert find_cycle(graph) == ["relbench.metrics.a", "relbench.metrics.b", "relbench.metrics.a"]


def test_metrics_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "relbench.metrics.loading" in graph and graph["relbench.metrics.loading"] == set()
    assert find_cycle(graph) is None


def test_model_loading_and_digests_have_one_owner() -> None:
    """Every metric imports the loading helpers from ``loading`` and ``image_digest`` from
    ``embedding_cache``: ``clip`` is no toolbox for the others."""
    assert "relbench.metrics.clip" not in import_graph()["relbench.metrics.embedding_cache"]
    for module, imports in import_graph().items():
        if module not in ("relbench.metrics.clip_r", "relbench.metrics.identity.metric"):  # they use CLIP itself
            assert "relbench.metrics.clip" not in imports, module
