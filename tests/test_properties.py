"""Property-based: whatever shape a user's data file has, a grid on it either trains, evaluates and
reports, or stops before training with a medpeft error that names the file.

Hypothesis draws the task type (classification, multi-label, NER, summarization on a causal and on a
seq2seq model), the method (every registered method that trains on CPU), the file's format and its
records: 1 to ~300 words a text (past the encoders' 512 positions; CPU training cuts a batch into
slices of similar length only when rows differ enough), label sets with rare labels
and odd names, texts that look empty (spaces, zero-width characters), and Unicode (accents, CJK, RTL,
emoji). Tiny random models and one optimiser step keep each draw to a few seconds; three draws a task
type, the same in every run (derandomized), keep the whole test near a minute.
"""
from __future__ import annotations

import csv
import json
import math

import pytest
from hypothesis import HealthCheck, event, given, settings, strategies as st

from medpeft.config import expand_grid
from medpeft.errors import MedpeftError
from medpeft.grid import run_grid
from medpeft.registry import METHODS

TASK_MODELS = {  # (task type, model): one tiny model per kind
    "classification": "tiny-bert", "multilabel": "tiny-bert", "ner": "tiny-bert",
    "summarization-causal": "tiny-llama", "summarization-seq2seq": "tiny-t5",
}
CPU_METHODS = sorted(name for name, spec in METHODS.items() if spec.trains and name != "qlora")  # qlora: CUDA only
WORDS = st.sampled_from(["patient", "fever", "Ménière", "naïve", "β-blocker", "患者", "高血压", "مريض", "🙂", "mg/dL",
                         "O2", "x", "—", "ﬁbrosis", "e\u0301", "CRP", "ECG", "2.5", "-", "'", '"', "a,b", "semi;colon"])
BLANKISH = st.sampled_from(["", " ", "\u200b", "\t", "\u00a0"])
LABELS = st.sampled_from(["yes", "no", "Maybe", "B", "1", "2.0", "<b>x</b>", "=1+1", "ü", "病", "long label with spaces", "none"])
ENTITY_TYPES = st.sampled_from(["Disease", "Drug", "ADE", "chem_1", "Ü"])


def text(draw, low=1, high=300) -> str:
    words = draw(st.lists(WORDS, min_size=low, max_size=high))
    return " ".join(words) if draw(st.integers(0, 49)) else draw(BLANKISH)  # 1 in 50 looks empty (refused, naming its line)


@st.composite
def records(draw, kind: str) -> list[dict]:
    count = draw(st.integers(6, 20))
    if kind == "ner":
        rows = []
        for i in range(count):
            tokens = draw(st.lists(WORDS, min_size=1, max_size=300))
            tags, j = ["O"] * len(tokens), 0
            while j < len(tokens):
                if draw(st.integers(0, 3)) == 0:
                    entity, span = draw(ENTITY_TYPES), draw(st.integers(1, 3))
                    for k in range(j, min(j + span, len(tokens))):
                        tags[k] = f"{'B' if k == j else 'I'}-{entity}"
                    j += span
                else:
                    j += 1
            rows.append({"id": f"s{i}", "tokens": tokens, "tags": tags})
        return rows
    labels = draw(st.lists(LABELS, min_size=1, max_size=4, unique=True))
    rows = []
    for i in range(count):
        if kind == "classification":
            target = draw(st.sampled_from(labels))
        elif kind == "multilabel":
            target = draw(st.lists(st.sampled_from(labels), min_size=0, max_size=len(labels), unique=True))
        else:
            target = text(draw, 1, 30)
        rows.append({"id": f"r{i}", "text": text(draw), "target": target})
    return rows


def write_data(path, rows: list[dict], as_csv: bool) -> None:
    if not as_csv:
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        return
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "text", "target"])
        writer.writeheader()
        for row in rows:
            target = row["target"]
            writer.writerow({**row, "target": ";".join(target) if isinstance(target, list) else target})


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("properties")


@pytest.mark.parametrize("kind", sorted(TASK_MODELS))
@settings(max_examples=10, deadline=None, derandomize=True,  # the same draws in every CI run: a failure reproduces
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=st.data(), method=st.sampled_from(CPU_METHODS))
def test_any_data_file_trains_and_reports_or_is_refused_naming_the_file(data, kind, method, folder, assets_ready):
    task_type = kind.split("-")[0]
    rows = data.draw(records(task_type), label="records")
    as_csv = task_type != "ner" and data.draw(st.booleans(), label="csv")
    draw_id = len(list(folder.iterdir()))
    path = folder / f"draw{draw_id}.{'csv' if as_csv else 'jsonl'}"
    write_data(path, rows, as_csv)
    task = {"type": task_type, "path": str(path), "name": f"draw{draw_id}",
            "fractions": {"train": 0.6, "validation": 0.0, "test": 0.4}}
    if task_type != "ner":
        task.update(text_field="text", target_field="target")
    spec = {"base": {"task": task, "model": TASK_MODELS[kind], "method": method, "seed": 0,
                     "data": {"max_source_tokens": 512 if task_type != "summarization" else 128, "max_target_tokens": 16},
                     "train": {"max_steps": 1, "batch_size": 8, "eval_batch_size": 8},
                     "generation": {"max_new_tokens": 4}}}
    runs_dir = folder / f"runs{draw_id}"
    try:
        outcome = run_grid(expand_grid(spec, name=f"draw{draw_id}"), runs_dir, log=lambda *a: None)
    except MedpeftError as err:
        event(f"refused: {type(err).__name__}: {str(err).split(': ', 2)[-1][:60]}")
        assert path.name in str(err), f"the error does not name the file: {err}"
        assert not list(runs_dir.rglob("result.json")), "trained, then refused"
        return
    event("trained and reported")
    failures = [r.error for r in outcome.failed]
    assert outcome.exit_code == 0, f"{kind} {method}: {failures or outcome.outputs_failed}"
    results = [json.loads(p.read_text()) for p in outcome.grid_dir.glob("*/result.json")]
    assert {r["method"] for r in results} == {method, "untrained"}
    assert all(v is None or math.isfinite(v) for r in results for v in r["metrics"].values())
    assert (outcome.grid_dir / "report.html").is_file()
