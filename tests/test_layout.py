"""The layout's rules, read from the code: imports flow one way, and the core stands alone.

Every `import` of every module under augment/ counts, at the top or inside a function, type-only
ones too: a cycle through a function-level import is still a cycle in the design.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "augment"

#: Layers above the core: each may import the core and the layers listed, nothing else.
#: The core is every other module.
ABOVE_CORE = {
    "augment.bench": set(),
    "augment.reporting": {"augment.bench"},
    "augment.digits": {"augment.bench", "augment.reporting"},
    "augment.api": {"augment.bench", "augment.reporting", "augment.digits"},
    "augment": {"augment.api"},  # the package's front door, loaded on first use
    "augment.cli": {"augment.api", "augment.bench", "augment.digits"},
    "augment.__main__": {"augment.cli"},  # python -m augment: the command line, nothing more
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The augment modules a file imports (`from pkg import mod` counts as pkg.mod)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "augment")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module.split(".")[0] != "augment":
                continue
            for alias in node.names:
                child = f"{node.module}.{alias.name}"
                found.add(child if child in known else node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: imports_of(path, known) - {name} for name, path in modules().items()}


def layer_of(name: str) -> str | None:
    """The layer above the core a module belongs to, or None for the core."""
    for layer in sorted(ABOVE_CORE, key=len, reverse=True):
        if name == layer or (layer != "augment" and name.startswith(layer + ".")):
            return layer
    return None


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_imports_have_no_cycle():
    assert cycles(import_graph()) == []


def test_the_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]


def test_each_layer_imports_only_the_core_and_the_layers_below():
    broken = []
    for name, targets in import_graph().items():
        layer = layer_of(name)
        allowed = ABOVE_CORE.get(layer, set()) if layer else set()
        for target in targets:
            target_layer = layer_of(target)
            if target_layer not in (None, layer) and target_layer not in allowed:
                broken.append(f"{name} imports {target}")
    assert broken == []


def test_core_modules_stand_alone():
    """The stages never reach up into the digits world, the benchmarks or the CLI."""
    core = [name for name in import_graph() if layer_of(name) is None]
    for stage in (
        "taxonomy",
        "prompting",
        "planning",
        "generate",
        "sinks",
        "filters",
        "distribute",
    ):
        assert any(
            name == f"augment.{stage}" or name.startswith(f"augment.{stage}.") for name in core
        )
    graph = import_graph()
    reached_up = {
        f"{name} -> {target}"
        for name in core
        for target in graph[name]
        if target.startswith(("augment.digits", "augment.bench", "augment.cli", "augment.api"))
    }
    assert reached_up == set()


def test_importing_a_core_module_does_not_load_the_layers_above():
    """A Ray worker imports `augment.distribute`: that must not pull in the API or the CLI."""
    import subprocess
    import sys

    code = (
        "import sys, augment.distribute, augment.generate.engine; "
        "print(sorted(m for m in sys.modules if m.startswith(('augment.api', 'augment.cli', "
        "'augment.digits', 'augment.bench'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "[]"


def test_an_installed_copy_finds_its_shipped_data(tmp_path: Path):
    """What a wheel holds (the modules and pyproject's package-data), away from the checkout,
    runs the demo's job and finds the shipped concept lists: nothing it reads lies beside the
    package (the shipped taxonomies once did, and a pip-installed augment knew no `digits`)."""
    import shutil
    import subprocess
    import sys
    import tomllib

    setuptools = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]
    patterns = ["**/*.py", *setuptools["setuptools"]["package-data"]["augment"]]
    site = tmp_path / "site"
    for pattern in patterns:
        for path in PACKAGE.glob(pattern):
            if "__pycache__" not in path.parts:
                copy = site / "augment" / path.relative_to(PACKAGE)
                copy.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, copy)
    script = (
        "import augment as ag\n"
        "from augment.digits.demo import DEMO_JOB\n"
        f"assert ag.__file__.startswith({str(site)!r}), ag.__file__\n"
        "spec = ag.load_spec(DEMO_JOB)\n"
        "print(len(ag.plan(spec)), len(ag.concepts(source='coco')), "
        "len(ag.concepts(source='weeds')) > 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["3400", "80", "True"]
