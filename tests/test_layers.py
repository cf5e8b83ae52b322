"""The layout's rule, checked on the source: layers import only downward, and no module imports itself back.

This file is the one statement of the layers: RANKS below. A module imports only from lower ranks
(never from its own rank, except its own folder's modules); the report reads the run's contract (the
metric table and the result record), nothing else of run/. The README's Layout section states the
layers as `layer_line()` writes them, top first (a test checks it):

__main__ -> cli -> grid, pretrain, bench/ -> tune/, use/ -> run/, report/ -> plan -> methods, models, tasks/,
engines/ -> config/, registry, data/, dist, files -> errors
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

import medpeft

PACKAGE = Path(medpeft.__file__).parent
RANKS = {  # by module (dotted, without "medpeft.") or by folder; the package's __init__ imports nothing
    "errors": 0,
    "config": 1, "registry": 1, "data": 1, "dist": 1, "files": 1,
    "methods": 2, "models": 2, "tasks": 2, "engines": 2,
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


def test_importing_medpeft_does_no_work_and_the_registries_load_explicitly():
    """Issue 29: `import medpeft` imported methods, models and tasks (layer 2) to fill the registries.
    Now it imports nothing; medpeft.load_registries() (or importing a module that reads them, e.g.
    medpeft.plan) fills them."""
    import subprocess
    import sys

    code = ("import sys, medpeft; loaded = sorted(m for m in sys.modules if m.startswith('medpeft.')); print(loaded); "
            "from medpeft.registry import METHODS, MODELS, TASKS; assert not (METHODS or MODELS or TASKS); "
            "medpeft.load_registries(); assert 'lora' in METHODS and 'tiny-bert' in MODELS and 'pubmed-rct' in TASKS")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def layer_line(arrow: str = " → ") -> str:
    """RANKS as one line, top layer first, folders with a trailing slash: the README's statement of the layers."""
    by_rank: dict[int, list[str]] = {}
    for name, r in RANKS.items():
        by_rank.setdefault(r, []).append(f"`{name}/`" if name in FOLDERS else f"`{name}`")
    return arrow.join(", ".join(names) for _, names in sorted(by_rank.items(), reverse=True))


def test_the_readme_states_the_layers_this_file_enforces():
    """One layer spec: the README's Layout line is RANKS, rendered; and this file's docstring too."""
    readme = " ".join((PACKAGE.parents[1] / "README.md").read_text().split())
    assert layer_line() in readme, f"README's Layout section should state: {layer_line()}"
    assert layer_line(" -> ").replace("`", "") in " ".join(__doc__.split())
