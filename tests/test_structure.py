"""The package's shape: no import cycle, and the maths modules import no file, image-decoding,
model or command-line module (issue #11). Read from the source with ``ast``: nothing is run."""

from __future__ import annotations

import ast
from pathlib import Path

import deepspectral

PACKAGE = Path(deepspectral.__file__).resolve().parent
#: Modules that are pure maths on arrays: they may import only each other (and numpy, scipy, numba).
MATHS = {"geometry", "affinity", "eigen", "eigen_torch", "spectral", "features", "defaults", "_kernels", "bilateral", "recipes.tokencut", "recipes.tokencut_torch", "recipes.scores", "recipes.maskcut"}


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    """Package-internal modules ``path`` imports (relative imports resolved), at module level
    (not inside functions, not under ``if TYPE_CHECKING``) when ``top_level_only``."""
    name = _module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    found = set()
    for node in nodes:
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                target = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("deepspectral"):
                target = node.module[len("deepspectral."):] if node.module != "deepspectral" else ""
            else:
                continue
            for alias in node.names:  # `from . import defaults` imports a module
                candidate = f"{target}.{alias.name}".strip(".")
                found.add(candidate if _exists(candidate) else target)
    return {module for module in found if module and _exists(module)}


def _exists(module: str) -> bool:
    path = PACKAGE.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _graph(*, top_level_only: bool) -> dict[str, set[str]]:
    return {
        _module_name(path): _imports(path, top_level_only=top_level_only) - {_module_name(path)}
        for path in PACKAGE.rglob("*.py")
    }


def test_no_import_cycle_at_module_level():
    graph = _graph(top_level_only=True)
    state: dict[str, int] = {}

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail + [module, target]))
            if state.get(target) is None:
                visit(target, trail + [module])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [])


def test_maths_modules_import_only_maths():
    graph = _graph(top_level_only=False)  # lazy imports inside functions count too
    for module in MATHS:
        assert graph[module] <= MATHS, f"{module} imports {sorted(graph[module] - MATHS)}"


#: The only imports between task families: self-training reads the semantic run folder,
#: and a semantic run predicts with its self-trained network (a lazy import, when it has one).
ALLOWED_BETWEEN_TASKS = {("tasks.selftrain", "tasks.semantic.rundir"), ("tasks.semantic.predict", "tasks.selftrain")}


def test_tasks_do_not_import_each_other():
    """Geometry lives in geometry.py: no task reaches into another for it."""
    graph = _graph(top_level_only=False)
    for module, targets in graph.items():
        if not module.startswith("tasks."):
            continue
        family = ".".join(module.split(".")[:2])
        others = {t for t in targets if t.startswith("tasks.") and not t.startswith(family)}
        assert {(module, t) for t in others} <= ALLOWED_BETWEEN_TASKS, (module, others)
