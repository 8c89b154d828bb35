"""The import graph of `pipeline`: no cycles, so that every module can be read (and imported) after the ones it uses;
and the same between packages: a package (`pipeline.model`, `pipeline.training`, ...) never imports one that
imports it, so the packages can be read in one order too.

The graph is read from the source (AST), not from a running interpreter, and counts function-level imports too: a
lazy import hides a cycle from `python -c "import ..."` but not from a reader. Imports under `if TYPE_CHECKING:`
are left out (they never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imported(tree: ast.AST, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The `pipeline` modules `tree` imports (`from pipeline.x import y` counts as pipeline.x.y when that is a
    module, else pipeline.x)."""
    found: set[str] = set()

    def add(name: str) -> None:
        while name and name not in modules:  # `import pipeline.data.decode` -> the module itself
            name = name.rpartition(".")[0]
        if name and name != module:
            found.add(name)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = module if is_package else module.rpartition(".")[0]
                for _ in range(node.level - 1):
                    package = package.rpartition(".")[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                full = f"{base}.{alias.name}"
                add(full if full in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(files)
    return {m: _imported(ast.parse(p.read_text(), str(p)), m, p.name == "__init__.py", modules)
            for m, p in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle [a, b, ..., a] of `graph`, or None. A package's `__init__` importing its own submodules is not a
    cycle of the code (Python imports the package first), so edges from a package into itself are skipped."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def edges(m: str) -> list[str]:
        return sorted(d for d in graph.get(m, ()) if not d.startswith(m + "."))

    def dfs(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for d in edges(m):
            if state.get(d) == 1:
                return path[path.index(d):] + [d]
            if d not in state:
                cycle = dfs(d)
                if cycle:
                    return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = dfs(m)
            if cycle:
                return cycle
    return None


def package_of(module: str) -> str:
    """`pipeline.training.loop` -> `pipeline.training`; a module at the package root is its own node."""
    path = PACKAGE.parent.joinpath(*module.split("."))
    return module if path.is_dir() or module.count(".") < 2 else ".".join(module.split(".")[:2])


def package_graph(graph: dict[str, set[str]]) -> dict[str, dict[str, set[tuple[str, str]]]]:
    """package -> {package it imports: the module imports that make the edge}."""
    out: dict[str, dict[str, set[tuple[str, str]]]] = {}
    for module, imported in graph.items():
        edges = out.setdefault(package_of(module), {})
        for other in imported:
            if package_of(other) != package_of(module):
                edges.setdefault(package_of(other), set()).add((module, other))
    return out


def test_the_graph_is_read():
    graph = import_graph()
    assert "pipeline.data.pipeline" in graph["pipeline.training.run"]  # a function-level import
    assert {"pipeline.data.shards", "pipeline.data.sampling"} <= graph["pipeline.data.clips"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_leaves_stay_leaves():
    """Modules the others build on import nothing above them (issue 12): the key remapping, storage, the pure
    data functions."""
    graph = import_graph()
    assert graph["pipeline.model.keys"] == set()
    assert graph["pipeline.storage"] == set()
    for pure in ("pipeline.data.sampling", "pipeline.data.transforms"):
        assert graph[pure] <= {"pipeline.data.sampling"}, (pure, graph[pure])
    assert graph["pipeline.data.shards"] == {"pipeline.storage"}
    # The trainer-side JPEG clips run where Ray is not installed (`make gpu-check` on GPU machines).
    assert graph["pipeline.data.jpeg_clips"] == {"pipeline.data.transforms"}
    assert "pipeline.data.pipeline" not in graph["pipeline.data.shards"]
    assert "pipeline.model.eco" not in graph["pipeline.model.weights"]


def test_no_package_imports_a_package_that_imports_it():
    packages = package_graph(import_graph())
    assert "pipeline.inference" in packages["pipeline.training"]  # eco evaluate's model actors: a real edge
    cycle = find_cycle({p: set(edges) for p, edges in packages.items()})
    if cycle:
        why = [f"{a} -> {b}: " + ", ".join(f"{m} imports {d}" for m, d in sorted(packages[a][b]))
               for a, b in zip(cycle, cycle[1:])]
        raise AssertionError("package import cycle:\n" + "\n".join(why))


def test_the_model_package_stands_alone():
    """The model family and its checkpoint reader use no training, inference or data code (a model is usable
    without the pipeline)."""
    packages = package_graph(import_graph())
    assert set(packages["pipeline.model"]) <= {"pipeline.config", "pipeline.labels", "pipeline.storage"}


def _third_party_importers(package: str) -> set[str]:
    """The `pipeline` modules that import `package` (at any level, lazily included)."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n == package or n.startswith(package + ".") for n in names):
                found.add(_module_name(path))
    return found


def test_native_decoders_stay_behind_their_modules():
    """decord behind the decord backend, PyAV behind encode (whose primitives the PyAV backend composes); the
    benchmark's naive baselines use both on purpose, to measure what the project's defences cost."""
    assert _third_party_importers("decord") <= {"pipeline.data.decord_backend", "pipeline.bench.baselines"}
    assert _third_party_importers("av") <= {"pipeline.data.encode", "pipeline.data.pyav_read", "pipeline.bench.baselines"}
    assert "pipeline.data.decord_backend" in _third_party_importers("decord")


def test_wandb_stays_behind_tracking_and_its_private_log_is_not_read():
    """wandb only in pipeline.training.tracking, and no library module reads W&B's private transaction log (its
    protobuf records): W&B continuity comes from the project's own record (tests/wandb_offline.py reads the log
    back, as a test tool)."""
    assert _third_party_importers("wandb") == {"pipeline.training.tracking"}
    private = ("wandb_internal_pb2", "wandb.proto")
    assert [p for p in PACKAGE.rglob("*.py") if any(name in p.read_text() for name in private)] == []
