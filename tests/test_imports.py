"""The package's shape: the packages' floors (imports point down only), no import cycle among vib_deploy's modules
(function-local imports included), no module over 400 lines, no function over 60 lines without a
`# long function: <why>` comment."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vib_deploy"
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def import_graph() -> dict[str, set[str]]:
    """Module -> the vib_deploy modules it imports anywhere in its file (top level, functions, TYPE_CHECKING)."""
    modules = _modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                if node.level:  # relative: resolve against this module's package
                    base = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets.add(module)
                targets.update(f"{module}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, three colours)."""
    colour = {n: 0 for n in graph}  # 0 new, 1 on the stack, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        colour[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if colour[nxt] == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if colour[nxt] == 0 and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        colour[node] = 2
        return None

    for node in sorted(graph):
        if colour[node] == 0 and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_graph_sees_function_local_imports():
    graph = import_graph()
    assert "vib_deploy.model.graph" in graph["vib_deploy.nets"]  # imported inside functions only
    assert "vib_deploy.studies.peers" in graph["vib_deploy.studies.compare"]


def test_no_import_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# The floors, lowest first: a module imports from its own package or a package on a lower floor, never a higher one
# (docs/architecture.md draws them). A top-level module (config, nets, pipeline, errors) is a package of its own.
FLOORS = [
    ("errors",),  # the one user-facing error type
    ("runs", "records"),  # files written whole, the run directory, the typed records of each stage
    ("measure",),  # the measuring core: one clock, machine facts, free memory, latency tables' maths
    ("data",),  # IDX datasets, image folders and arrays
    ("model", "zoo"),  # layers, VIB gates, the dependency graph, gated nets; the zoo's nets
    ("training",),  # the loop, checkpoints, torchrun, KL weighting, evaluation
    ("prune",),  # structural pruning, exact (checked against the trained net)
    ("nets",),  # model files: save and load_model (replays a pruning record)
    ("backends",),  # runners: torch, ONNX Runtime, OpenVINO, TensorRT, AOTInductor, Triton client
    ("config",),  # pipeline files: the schema (validates zoo and backend names), reading them, safe YAML
    ("deploy",),  # export, engines, INT8, widths, what is deployed, the matrix, the choice
    ("bench",),  # benches of deployments, latency tables timed, profiles, the GPU day
    ("report",),  # metrics.json, report.md, plots, statistics, tracking
    ("triton",),  # model repositories, the local server, served benches
    ("stages",),  # the stage registry and each stage's glue (Context)
    ("pipeline",),  # run: the stages in order
    ("studies",),  # sweep, compare, paper, search; serial or on Ray
    ("cli", "__main__"),  # the typer app
]


def floor_of(module: str) -> int:
    """A vib_deploy module's floor (the package `vib_deploy` itself: the top, it only holds the version)."""
    parts = module.split(".")
    package = parts[1] if len(parts) > 1 else "__init__"
    for i, packages in enumerate(FLOORS):
        if package in packages:
            return i
    return len(FLOORS) if package == "__init__" else -1


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """`a -> b` for every import of a module on a higher floor than the importer's (and modules with no floor)."""
    found = [f"{m} has no floor in FLOORS" for m in graph if floor_of(m) < 0]
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if target != "vib_deploy" and floor_of(target) > floor_of(module):
                found.append(f"{module} -> {target}")
    return found


def test_imports_point_down_the_floors():
    found = upward_imports(import_graph())
    assert not found, "imports against the floors (tests/test_imports.py FLOORS):\n" + "\n".join(found)


@pytest.mark.parametrize(
    ("importer", "imported"),
    [
        ("vib_deploy.deploy.choose", "vib_deploy.pipeline"),  # a step never imports the pipeline
        ("vib_deploy.deploy.cpu_deploy", "vib_deploy.stages.base"),  # nor a stage's Context
        ("vib_deploy.report.summary", "vib_deploy.cli.app"),
        ("vib_deploy.runs.directory", "vib_deploy.triton.repository"),
    ],
)
def test_a_planted_upward_import_fails_with_both_names(importer, imported):
    graph = {**import_graph()}
    graph[importer] = graph[importer] | {imported}
    assert f"{importer} -> {imported}" in upward_imports(graph)


def test_a_new_package_needs_a_floor():
    assert "vib_deploy.newroom.x has no floor in FLOORS" in upward_imports({"vib_deploy.newroom.x": set()})


def test_layers_is_a_leaf():
    assert import_graph()["vib_deploy.model.layers"] <= {"vib_deploy.errors", "vib_deploy.model.vib"}


def test_no_module_over_400_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


MAX_FUNCTION_LINES = 60


def test_a_long_function_says_why():
    unexplained = []
    for name, path in _modules().items():
        source = path.read_text()
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno is not None:
                body = lines[node.lineno - 1 : node.end_lineno]
                if len(body) > MAX_FUNCTION_LINES and not any(
                    line.strip().startswith("# long function:") for line in body
                ):
                    unexplained.append(f"{name}.{node.name} ({len(body)} lines)")
    assert not unexplained, (
        f"functions over {MAX_FUNCTION_LINES} lines without a '# long function:' comment: {unexplained}"
    )
