"""The layout's rule, checked on the source: layers import only downward, and no module imports itself back.

cli -> grid, pretrain, bench -> tune -> report | run -> plan -> methods, models, tasks -> config, registry, data, dist -> errors.
A module may import its own folder's modules; the report reads the run's contract (the metric table
and the result record), nothing else of run/.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import medpeft

PACKAGE = Path(medpeft.__file__).parent
RANKS = {  # by module (dotted, without "medpeft.") or by folder
    "errors": 0,
    "registry": 1, "config": 1, "data": 1, "dist": 1, "files": 1,
    "methods": 2, "models": 2, "tasks": 2,
    "plan": 3,
    "run": 4, "report": 4,
    "tune": 5, "use": 5,  # use/ reads run/ (encode, kinds, predict, record), so it sits above it
    "grid": 6, "pretrain": 6, "bench": 6,
    "cli": 7, "__main__": 8,
}
REPORT_MAY_READ = {"run.metrics", "run.record"}  # the run's on-disk contract


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """medpeft modules this file imports, anywhere in it (function-level imports count too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medpeft"):
            base = node.module.removeprefix("medpeft").lstrip(".")
            for alias in node.names:  # `from medpeft.report import plots` imports a module
                candidate = f"{base}.{alias.name}" if base else alias.name
                found.add(candidate if (PACKAGE / candidate.replace(".", "/")).with_suffix(".py").exists() else base)
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("medpeft.") for a in node.names if a.name.startswith("medpeft.")}
    return {m for m in found if m}


def rank(module: str) -> int:
    return RANKS.get(module, RANKS.get(module.split(".")[0]))


MODULES = {module_name(p): imported_modules(p) for p in sorted(PACKAGE.rglob("*.py"))}
FOLDERS = {module_name(p) for p in PACKAGE.rglob("__init__.py")} - {""}


def test_every_module_has_a_layer():
    assert all(rank(m) is not None for m in MODULES if m), [m for m in MODULES if m and rank(m) is None]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m))
def test_imports_go_only_downward(module):
    folder = module.split(".")[0]
    wrong = []
    for target in MODULES[module]:
        same_folder = ("." in module or module in FOLDERS) and target.split(".")[0] == folder
        contract = folder == "report" and target in REPORT_MAY_READ
        if not (rank(target) < rank(module) or same_folder or contract):
            wrong.append(target)
    assert not wrong, f"{module} (layer {rank(module)}) imports {wrong} from its own layer or above"


def test_no_import_cycles():
    graph = {m: {t for t in targets if t in MODULES and t != m} for m, targets in MODULES.items()}
    state: dict[str, int] = {}

    def visit(node, path):
        state[node] = 1
        for nxt in graph[node]:
            if state.get(nxt) == 1:
                raise AssertionError("import cycle: " + " -> ".join(path + [node, nxt]))
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for m in graph:
        if m not in state:
            visit(m, [])


def test_the_run_contract_reads_no_model_code():
    """The metric table and the result record stay light: the report imports them without torch or the run."""
    for module in REPORT_MAY_READ:
        assert all(rank(t) <= 1 for t in MODULES[module]), (module, MODULES[module])
