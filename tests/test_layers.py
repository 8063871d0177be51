"""The package's layers only point down, and no module imports itself back through others.

Every import in twossp (at module level, inside functions, under TYPE_CHECKING: all of them) is
read from the source and checked against the order the README states. A module may import its own
layer and the ones below it; the package root (``twossp``, the public facade) sits on top.
"""

from __future__ import annotations

import ast
from pathlib import Path

import twossp

#: The README's order, bottom first. A module's layer is its longest matching prefix.
LAYERS: list[tuple[str, ...]] = [
    ("twossp.errors", "twossp.contracts", "twossp.registry", "twossp.budget", "twossp.cache", "twossp.fingerprint",
     "twossp.device", "twossp.tasks", "twossp.strict"),
    ("twossp.methods",),
    ("twossp.spec",),
    ("twossp.plan", "twossp.memory"),
    ("twossp.data",),
    ("twossp.families",),
    ("twossp.placement",),
    ("twossp.prune",),
    ("twossp.recover",),
    ("twossp.evaluate",),
    ("twossp.checkpoint", "twossp.serve"),
    ("twossp.db", "twossp.migrations"),
    ("twossp.runtime",),
    ("twossp.dash", "twossp.dashboards"),
    ("twossp.cli",),
    ("twossp",),
]

ROOT = Path(twossp.__file__).resolve().parent
REPO = ROOT.parent


def _modules() -> dict[str, Path]:
    found = {}
    for base, package in ((ROOT, "twossp"), (REPO / "migrations", "twossp.migrations"),
                          (REPO / "dashboards", "twossp.dashboards")):
        for path in base.rglob("*.py"):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


MODULES = _modules()


def layer(module: str) -> int:
    best, index = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, index = len(prefix), i
    assert index is not None, f"{module} is in no layer: add it to the README's order and to LAYERS"
    return index


def imports(module: str, path: Path) -> set[str]:
    """twossp modules ``module`` imports anywhere in its source (``from a import b``: ``a.b`` when
    that is a module, else ``a``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base for alias in node.names]
        else:
            continue
        found |= {name for name in names if name == "twossp" or name.startswith("twossp.")}
    return found - {module}


GRAPH = {module: imports(module, path) for module, path in MODULES.items()}


def test_every_import_points_down_or_sideways() -> None:
    upward = sorted(f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)})"
                    for module, targets in GRAPH.items() for target in targets if layer(target) > layer(module))
    assert not upward, "imports that point up the layers:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    """No module reaches itself through the modules it imports (Tarjan's strongly connected components)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in GRAPH.get(node, ()):
            target = target if target in GRAPH else target.rpartition(".")[0]
            if target not in GRAPH:
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not cycles, f"import cycles: {cycles}"


def test_the_readme_states_the_same_order() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    order = " -> ".join("/".join(p.removeprefix("twossp.") or "twossp" for p in prefixes) for prefixes in LAYERS)
    assert order in readme, f"the README should state the layering as: {order}"
