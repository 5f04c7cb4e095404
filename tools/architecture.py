"""Draw hearflow's import graph from the code and check the house rules (ARCHITECTURE.md).

    python3 tools/architecture.py            # the graph, one line per module, then the check
    python3 tools/architecture.py --check    # only the check; exit 1 when a rule is broken

Imports are read with `ast` (module-level and inside functions; those under
``if TYPE_CHECKING:`` are for type hints only and left out). Each module belongs to
one kind by its first name under ``hearflow/``:

- layers: errors, io, methods, presets, config, inference, rng, metrics, negatives,
  objective, distributed, checkpoint, hub/, overlay, scoring, backends, media/, data/, model/;
- stages: prepare, pack, train, calibrate, evaluate, localize/;
- the lab: synthetic/;
- apps: serve/ (a program above the stages that people use through a browser);
- the command line: cli; the face: ``hearflow/__init__.py``.

Rules: layers import only layers; stages import only layers (never each other);
the lab imports layers and stages; apps import layers and stages; only cli imports
the lab and the apps; no import cycles;
modules under ~450 lines and functions under ~60 (reported above a small margin).
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hearflow"
LAYERS = {"errors", "io", "methods", "presets", "config", "inference", "rng", "metrics", "negatives", "objective",
          "distributed", "checkpoint", "hub", "overlay", "scoring", "backends", "media", "data", "model"}
STAGES = {"prepare", "pack", "train", "calibrate", "evaluate", "localize"}
LAB = {"synthetic"}
APPS = {"serve"}
ALLOWED = {  # kind -> kinds it may import
    "layer": {"layer"},
    "stage": {"layer"},
    "lab": {"layer", "stage", "lab"},
    "app": {"layer", "stage"},
    "cli": {"layer", "stage", "lab", "app", "face"},
    "face": {"layer", "stage"},
}
MAX_MODULE_LINES = 460
MAX_FUNCTION_LINES = 65


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def kind(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "face"
    top = parts[1]
    if top == "cli":
        return "cli"
    if top in LAYERS:
        return "layer"
    if top in STAGES:
        return "stage"
    if top in LAB:
        return "lab"
    if top in APPS:
        return "app"
    return "unknown"


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for child in node.body:
                lines.update(range(child.lineno, child.end_lineno + 1))
    return lines


def imports(path: Path) -> set[str]:
    """The hearflow modules ``path`` imports (a package import counts as its __init__)."""
    tree = ast.parse(path.read_text())
    hints = _type_checking_lines(tree)
    found = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in hints:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("hearflow"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("hearflow"):
            found.add(node.module)
            for alias in node.names:  # `from hearflow import distributed` imports a module
                if (PACKAGE.parent / (node.module + "." + alias.name).replace(".", "/")).with_suffix(".py").exists():
                    found.add(f"{node.module}.{alias.name}")
    return found - {module_name(path)}


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports(path) for path in sorted(PACKAGE.rglob("*.py"))}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles among modules (each reported once, from its smallest name; every strongly
    connected group of modules shows at least one of its cycles)."""
    found, state = [], {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for target in sorted(edges.get(node, ())):
            if state.get(target) == "open":  # a cycle, reported from its smallest name whatever the way in
                cycle = trail[trail.index(target):]
                start = cycle.index(min(cycle))
                cycle = cycle[start:] + cycle[:start] + [cycle[start]]
                if cycle not in found:
                    found.append(cycle)
            elif target not in state:
                visit(target, trail + [target])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    return found


def problems(edges: dict[str, set[str]]) -> list[str]:
    """Every broken rule, one line each."""
    found = []
    for module, targets in edges.items():
        for target in sorted(targets):
            if target == "hearflow" and kind(module) != "face":
                continue  # `from hearflow import __version__`
            if module.split(".")[:2] == target.split(".")[:2]:
                continue  # inside one unit (a package's modules)
            if kind(target) not in ALLOWED.get(kind(module), set()):
                found.append(f"{module} ({kind(module)}) imports {target} ({kind(target)})")
    found += [f"import cycle: {' -> '.join(cycle)}" for cycle in cycles(edges)]
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text()
        lines = source.count("\n")
        if lines > MAX_MODULE_LINES:
            found.append(f"{module_name(path)} has {lines} lines (aim: under ~450)")
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    found.append(f"{module_name(path)}.{node.name} has {length} lines (aim: under ~60)")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="only check the rules")
    args = parser.parse_args()
    edges = graph()
    if not args.check:
        for module, targets in edges.items():
            inner = sorted(t.removeprefix("hearflow.") for t in targets if t != "hearflow")
            print(f"{module.removeprefix('hearflow.'):28s} [{kind(module)}] -> {', '.join(inner) or '-'}")
        print()
    broken = problems(edges)
    for line in broken:
        print(f"rule broken: {line}")
    if not broken:
        print("the house rules hold: layers < stages < lab < cli, no cycles, small modules and functions")
    return 1 if broken else 0


if __name__ == "__main__":
    sys.exit(main())
