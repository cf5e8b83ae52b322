"""One home per concept, checked by grep: the branches on a model kind or task type live in run/kinds.py
(and plan.py, which picks the kind; tasks/, which defines each type's data), the method names of the
baseline and of full fine-tuning in methods.py, and the reading of result.json's sections in run/record.py.
Everyone else asks the objects: `kind.decoder_only`, `spec.role`, `result.cost.trainable_pct`.

ALLOWED lists the files that still hold such code, each with who holds it. It may only shrink: a listed
file that no longer matches fails too, so the entry is removed the moment its file moves over.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "medpeft"
TYPES = r"summarization|classification|multilabel|ner|seq2seq|causal|encoder|seq_cls|token_cls"
METHOD_NAMES = r"full|untrained"


def branches_on(names: str) -> re.Pattern:
    """A comparison with, a membership test in, or a dict literal keyed by one of the quoted `names`."""
    quoted = rf"""["'](?:{names})["']"""
    return re.compile(rf"""(?:==|!=)\s*{quoted}|{quoted}\s*(?:==|!=)|\bin\s*[\(\[{{]\s*{quoted}|[{{,]\s*{quoted}\s*:""")


RULES = {  # rule -> (what it forbids, what only looks like it, the homes where it belongs)
    # kind, task-type and architecture names: ask the ModelKind (decoder_only, generates, single_label, ...);
    # tasks/ defines each type's data, run/metrics.py each type's headline metric, models.py the architectures
    "kind": (re.compile(branches_on(TYPES).pattern + r"|auto_class\s*(?:==|!=|in\b)"), None,
             {"run/kinds.py", "plan.py", "models.py", "run/metrics.py", "tasks/*"}),
    # "full" / "untrained": ask MethodSpec.role (methods.Role) or methods.method_role(name)
    "method": (branches_on(METHOD_NAMES), None, {"methods.py"}),
    # result.json's sections read by key: read RunResult.cost / .fit / .inputs / .tuning
    "result": (re.compile(r"""\.(?:efficiency|training)\b|\b(?:result|r|first|t|g)\.data\b|\.tuning\s*(?:\[|\.get\()|"""
                          r"""\[\s*["']tuning["']\s*\]|\.get\(\s*["']tuning["']"""),
               re.compile(r"\bmodel\.training\b"),  # torch's train/eval flag, not a result
               {"run/record.py"}),
}

# File -> the rules it still breaks, and who holds the file. Remove an entry when its file moves over. (A listed
# file that does not exist is passed over: several helpers share one working tree, and a new file may not be
# committed yet.)
ALLOWED: dict[str, set[str]] = {}  # empty since issue 29: add nothing, move the code to its home


def matches(rule: str, text: str) -> list[str]:
    pattern, look_alike, _ = RULES[rule]
    return [line.strip() for line in text.splitlines()
            if pattern.search(line) and not (look_alike is not None and look_alike.search(line))]


def is_home(rule: str, name: str) -> bool:
    return any(name == home or (home.endswith("/*") and name.startswith(home[:-1])) for home in RULES[rule][2])


def sources() -> dict[str, str]:
    return {p.relative_to(SRC).as_posix(): p.read_text(encoding="utf-8") for p in sorted(SRC.rglob("*.py"))}


def found(rule: str) -> dict[str, list[str]]:
    """Files outside the rule's homes that hold its code -> the lines."""
    return {name: hits for name, text in sources().items() if not is_home(rule, name) and (hits := matches(rule, text))}


@pytest.mark.parametrize("rule", sorted(RULES))
def test_concepts_stay_in_their_homes(rule):
    strays = {name: hits for name, hits in found(rule).items() if rule not in ALLOWED.get(name, set())}
    assert not strays, f"{rule} code outside its home (ask the object instead): {strays}"


@pytest.mark.parametrize("rule", sorted(RULES))
def test_the_allowed_list_only_shrinks(rule):
    holding = found(rule)
    moved = sorted(name for name, rules in ALLOWED.items() if rule in rules and name not in holding and (SRC / name).is_file())
    assert not moved, f"{moved} no longer hold {rule} code: remove {rule!r} from their ALLOWED entry"


def test_the_patterns_catch_what_they_are_for():
    """Each rule matches the code it forbids and leaves its look-alikes alone."""
    assert matches("kind", 'if run.result.task_type == "ner":') and matches("kind", 'x = {"summarization": 1}')
    assert matches("kind", 'decoder_only = kind.auto_class == "AutoModelForCausalLM"')
    assert matches("kind", 'if kind not in ("classification", "multilabel"):')
    assert not matches("kind", 'type="classification",') and not matches("kind", 'return "causal"')
    assert matches("method", 'if r.method == "untrained":') and matches("method", 'g.method in ("full", "untrained")')
    assert not matches("method", 'return Export(tmp, "full", notes)')
    assert matches("result", 'result.efficiency["trainable_pct"]') and matches("result", 'run.result.data.get("x")')
    assert matches("result", 'cfg.tuning.get("metric")') and matches("result", 'run.config.get("tuning")')
    assert not matches("result", "was_training = model.training") and not matches("result", "cfg.data.max_source_tokens")
