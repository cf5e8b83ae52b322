"""Domain pre-training: the corpus leaves out evaluation text, and the output is a usable model."""
from __future__ import annotations

import collections
import functools
import json
import re

import pytest
import torch

import medpeft.pretrain
import medpeft.tasks  # noqa: F401  (fills the task registry)
from medpeft import cli
from medpeft.config import config_from_dict, load_grid
from medpeft.errors import ConfigError
from medpeft.pretrain import MIN_KEY_CHARS, PretrainConfig, build_corpus, evaluation_texts, pretrain
from medpeft.registry import TASKS
from helpers import run_config

GRID = """
name: g
base: {task: pubmed-rct, model: tiny-bert, method: lora,
       data: {train_size: 8, val_size: 4, test_size: 20}}
"""
# Offline tasks whose text is MEDLINE/PubMed/PMC text, which the MEDLINE corpus may hold too.
PUBMED_TASKS = sorted(name for name, spec in TASKS.items()
                      if not spec.online and re.search(r"MEDLINE|PubMed|PMC", spec.source))
OTHER_TASKS = sorted(name for name, spec in TASKS.items() if not spec.online and name not in PUBMED_TASKS)
# Appended to a planted duplicate so it is a long enough document and holds more than the evaluation text.
FILLER = "This abstract appeared twice in MEDLINE, under a second PMID, as duplicate publications sometimes do."
LABEL = re.compile(r"^(?:[A-Z]+|Question|Context \(\d+\)): ")  # the line labels tasks put before a section


@pytest.fixture
def grid_file(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text(GRID)
    return path


def write_grid(tmp_path, task: str, test_size: int = 8) -> str:
    method = "untrained" if TASKS[task].eval_only else "lora"
    path = tmp_path / f"{task}.yaml"
    path.write_text(f"name: {task}\nbase: {{task: {task}, model: tiny-bert, method: {method}, "
                    f"data: {{train_size: 4, val_size: 3, test_size: {test_size}}}}}\n")
    return str(path)


def grid_evaluation(grid: str, overrides=()) -> list[dict]:
    """The validation and test examples the grid's runs are evaluated on (read as the runs read them)."""
    examples = {}
    for cfg in load_grid(grid, overrides).runs:
        task = TASKS[cfg.task].load(cfg.data)
        for ex in task.splits["validation"] + task.splits["test"]:
            examples[ex["id"]] = dict(ex, type=task.type)
    return list(examples.values())


@functools.lru_cache(maxsize=None)  # the same MEDLINE texts come back in every test
def normalised(text: str) -> str:
    return " ".join(re.sub(r"[\W_]+", " ", text.lower()).split())


def long_enough(passage: str) -> bool:
    """Whether a normalised passage is long enough to be held out (shorter ones recur in unrelated abstracts)."""
    return len(passage.replace(" ", "")) >= MIN_KEY_CHARS


def passages(ex: dict) -> list[str]:
    """The pieces of source text an example holds: each line of its input and of a text pair's second
    text (pubmedqa's abstract; label dropped), and a reference summary."""
    text = " ".join(ex["text"]) if isinstance(ex["text"], list) else ex["text"]
    lines = [LABEL.sub("", line) for line in f"{text}\n{ex.get('pair', '')}".splitlines() if line.strip()]
    return lines + ([ex["target"]] if ex["type"] == "summarization" else [])


def plant_duplicates(monkeypatch, examples: list[dict]) -> None:
    """Add to the corpus, under new PMIDs, a citation holding each example's text (a duplicate publication)."""
    planted = [{"pmid": f"99{i:07d}", "version": 1, "title": f"Duplicate {i}", "mesh": [], "pub_types": [],
                "sections": [{"label": "", "category": "", "text": text} for text in (FILLER, *passages(ex), FILLER)]}
               for i, ex in enumerate(examples)]
    real = medpeft.pretrain.corpus_citations()
    monkeypatch.setattr(medpeft.pretrain, "corpus_citations", lambda: sorted(real + planted, key=lambda c: c["pmid"]))


def assert_no_evaluation_text(docs: list[str], examples: list[dict]) -> None:
    """No document holds an evaluation passage, and no evaluation example holds a document's abstract."""
    pieces = {normalised(p) for ex in examples for p in passages(ex)}
    checked = [p for p in pieces if long_enough(p)]
    # A passage inside a document has its interior words as whole words of it: look only where its longest one is.
    anchors = {p: max(p.split()[1:-1], key=len, default=None) for p in checked}
    wanted, holders, texts = set(anchors.values()), collections.defaultdict(list), []
    evaluation, evaluation_words = "\n".join(pieces), set(" ".join(pieces).split())
    for doc in docs:
        title, _, abstract = doc.partition("\n") if "\n" in doc else ("", "", doc)
        text = f"{normalised(title)} {normalised(abstract)}"
        texts.append(text)
        for word in wanted.intersection(text.split()):
            holders[word].append(text)
        interior = normalised(abstract).split()[1:-1]
        if long_enough(normalised(abstract)) and evaluation_words.issuperset(interior):  # else no example holds it
            assert normalised(abstract) not in evaluation, f"a document is inside an evaluation example: {doc[:200]!r}"
    leaked = [p for p in checked if any(p in text for text in (holders[anchors[p]] if anchors[p] else texts))]
    assert not leaked, f"{len(leaked)} evaluation passages are in the pre-training corpus, e.g. {leaked[0][:200]!r}"


def test_pubmed_tasks_are_all_checked():
    assert {"pubmed-conclusion", "pubmed-rct", "pubmed-title", "mesh", "pubmedqa"} <= set(PUBMED_TASKS)


@pytest.mark.parametrize("task", PUBMED_TASKS)
def test_corpus_holds_no_evaluation_text(task, tmp_path, monkeypatch, assets_ready):
    """Real corpus plus a duplicate of every evaluation example under another PMID: none of them survives."""
    grid = write_grid(tmp_path, task)
    examples = grid_evaluation(grid)
    assert examples
    plant_duplicates(monkeypatch, examples)
    docs, stats = build_corpus(evaluation_texts([grid]), max_docs=0, seed=0)
    assert_no_evaluation_text(docs, examples)
    held_out = stats["held_out"][task]
    assert held_out["evaluation_texts"] == len(examples)
    checkable = [ex for ex in examples if any(long_enough(normalised(p)) for p in passages(ex))]
    assert held_out["dropped_citations"] >= len(checkable)  # at least the planted duplicates
    assert stats["dropped_for_evaluation"] == held_out["dropped_citations"]


def test_tasks_without_pubmed_text_hold_out_nothing(tmp_path, assets_ready):
    """Clinical dialogues, exam questions and drug reviews share no text with MEDLINE (ids are no PMIDs)."""
    blocks = "\n".join(f"  - {{task: {task}, method: lora}}" for task in OTHER_TASKS)
    grid = tmp_path / "clinical.yaml"
    grid.write_text("name: clinical\nbase: {model: tiny-bert, data: {train_size: 4, val_size: 3, test_size: 8}}\n"
                    f"grid:\n{blocks}\n")
    held_out = evaluation_texts([grid])
    assert set(held_out) == set(OTHER_TASKS)
    _, stats = build_corpus(held_out, max_docs=0, seed=0)
    assert stats["dropped_for_evaluation"] == 0


def test_set_overrides_change_what_is_held_out(tmp_path, monkeypatch, assets_ready):
    """`--set data.test_size=...` changes the evaluated examples, so it changes what is held out."""
    grid = write_grid(tmp_path, "pubmedqa", test_size=4)
    overrides = ["data.test_size=12", "data.split_seed=7"]
    base, overridden = grid_evaluation(grid), grid_evaluation(grid, overrides)
    assert {ex["id"] for ex in overridden} - {ex["id"] for ex in base}
    plant_duplicates(monkeypatch, base + overridden)
    _, base_stats = build_corpus(evaluation_texts([grid]), max_docs=0, seed=0)
    docs, stats = build_corpus(evaluation_texts([grid], overrides), max_docs=0, seed=0)
    assert_no_evaluation_text(docs, overridden)
    assert stats["held_out"]["pubmedqa"]["evaluation_texts"] == len(overridden) == 15
    assert set(stats["held_out"]["pubmedqa"]["pmids"]) != set(base_stats["held_out"]["pubmedqa"]["pmids"])


def test_hub_task_needs_online_to_be_held_out(tmp_path):
    """Offline, a hub data set's evaluation text cannot be read, so it cannot be held out: say so, never skip it."""
    grid = tmp_path / "hub.yaml"
    grid.write_text("name: hub\nbase: {task: pubmed-summarization, model: tiny-t5, method: lora}\n")
    with pytest.raises(ConfigError, match="--online"):
        evaluation_texts([grid])


def test_cli_passes_set_to_the_grids(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(medpeft.pretrain, "pretrain", lambda cfg, online: seen.append(cfg))
    args = ["pretrain", "--model", "tiny-bert", "--out", str(tmp_path / "m"), "--for-grid", "g.yaml",
            "--set", "data.test_size=12", "--set", "data.split_seed=7"]
    assert cli.main(args) == 0
    assert seen[0].exclude_grids == ("g.yaml",)
    assert seen[0].exclude_overrides == ("data.test_size=12", "data.split_seed=7")
    assert seen[0].precision == "auto"
    assert cli.main(args + ["--precision", "bf16"]) == 0 and seen[1].precision == "bf16"
    assert cli.main(args[:5] + ["--set", "data.test_size=12"]) == 2  # --set without --for-grid has nothing to change


def test_corpus_is_deterministic_and_capped(assets_ready):
    a, _ = build_corpus({}, max_docs=50, seed=3)
    b, _ = build_corpus({}, max_docs=50, seed=3)
    assert a == b and len(a) == 50


@pytest.mark.parametrize("model, objective", [("tiny-bert", "masked-lm"), ("tiny-llama", "causal-lm")])
def test_pretrained_model_is_usable_in_a_run(tmp_path, grid_file, model, objective, assets_ready):
    from medpeft.dist import default_precision

    out = tmp_path / f"{model}-medline"
    pretrain(PretrainConfig(model=model, out=str(out), exclude_grids=(str(grid_file),), max_docs=16, max_steps=2,
                            batch_size=8, lr=1e-3), log=lambda *_: None)
    info = json.loads((out / "pretrain.json").read_text())
    assert info["objective"] == objective and info["steps"] == 2
    assert info["precision"] == default_precision() and info["config"]["precision"] == "auto"  # auto, resolved here
    assert [step for step, _ in info["loss_curve"]] == [1, 2]  # logging_steps = steps // 10, at least 1
    assert "step 2/2 loss=" in (out / "train.log").read_text()  # the bar's log, not the Trainer's raw dicts
    assert info["corpus"]["held_out"]["pubmed-rct"]["evaluation_texts"] == 24  # 20 test + 4 validation sentences
    task = "pubmed-rct" if objective == "masked-lm" else "pubmed-conclusion"
    cfg = config_from_dict({"task": task, "model": str(out), "method": "lora", "data": {
        "train_size": 8, "val_size": 0, "test_size": 4, "max_source_tokens": 32, "max_target_tokens": 8},
        "train": {"max_steps": 1, "batch_size": 4}})
    result = run_config(cfg, tmp_path / "run")
    assert result.status == "ok"
    assert result.adapted_from == model  # recorded, so the report compares it with its base model's runs


def test_adapted_encoder_keeps_its_pooler_and_changes_its_encoder(tmp_path, grid_file, assets_ready):
    from transformers import AutoModel

    from medpeft.models import resolve_model

    out = tmp_path / "adapted"
    pretrain(PretrainConfig(model="tiny-bert", out=str(out), exclude_grids=(str(grid_file),), max_docs=16,
                            max_steps=2, batch_size=8, lr=1e-2), log=lambda *_: None)
    base = AutoModel.from_pretrained(resolve_model("tiny-bert", False))
    adapted = AutoModel.from_pretrained(out)
    assert torch.equal(base.pooler.dense.weight, adapted.pooler.dense.weight)  # not re-initialised
    assert not torch.equal(base.encoder.layer[0].attention.self.query.weight, adapted.encoder.layer[0].attention.self.query.weight)


def test_both_texts_of_a_pair_stay_out_of_the_corpus():
    """pubmedqa's abstract is the second text of its pair: it must be held out like the question."""
    from medpeft.run.forgetting import example_text

    ex = {"id": "q", "text": "Does it work?", "pair": "Results: it worked.", "target": "yes"}
    assert "Does it work?" in example_text(ex) and "Results: it worked." in example_text(ex)


def test_precision_is_checked_before_any_work(tmp_path, monkeypatch):
    """A misspelt precision names the flag; fp16 on a CPU is refused before the corpus is built."""
    import medpeft.pretrain as pretrain_mod

    with pytest.raises(ConfigError, match="--precision must be one of auto, fp32, bf16, fp16; got 'half'"):
        PretrainConfig(model="tiny-bert", out=str(tmp_path / "x"), precision="half")
    monkeypatch.setattr(pretrain_mod, "build_corpus", lambda *a: pytest.fail("built the corpus"))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(ConfigError, match="--precision: fp16 needs a CUDA GPU"):
        pretrain(PretrainConfig(model="tiny-bert", out=str(tmp_path / "x"), precision="fp16"), log=lambda *_: None)
    assert not (tmp_path / "x").exists()


def test_a_seq2seq_model_is_refused_by_the_cli_before_any_work(tmp_path, monkeypatch, capsys, assets_ready):
    """Issue 29: `medpeft pretrain` on a seq2seq model printed a ValueError's traceback after building the corpus."""
    import medpeft.pretrain as pretrain_mod

    monkeypatch.setattr(pretrain_mod, "build_corpus", lambda *a: pytest.fail("built the corpus"))
    assert cli.main(["pretrain", "--model", "tiny-t5", "--out", str(tmp_path / "t5")]) == 2
    err = capsys.readouterr().err
    assert "medpeft: error: model 'tiny-t5' is an encoder-decoder (seq2seq) model" in err and "Traceback" not in err
    assert not (tmp_path / "t5").exists()


@pytest.mark.parametrize("flags, needle", [
    (["--batch-size", "0"], "--batch-size must be >= 1, got 0"),
    (["--max-tokens", "0"], "--max-tokens must be >= 1, got 0"),
    (["--max-docs", "-5"], "--max-docs must be >= 0 (0: all), got -5"),
    (["--lr", "0"], "--lr must be > 0, got 0.0"),
    (["--lr", "nan"], "--lr must be a finite number"),
    (["--mlm-probability", "1.5"], "--mlm-probability must be in (0, 1), got 1.5"),
    (["--epochs", "0"], "--epochs or --max-steps must be > 0"),
    (["--seed", "-1"], "--seed must be in 0 .. 4294967295"),
])
def test_pretrain_values_are_checked_before_any_work(flags, needle, tmp_path, monkeypatch, capsys):
    """A value that cannot train is a ConfigError naming the flag (exit 2), before the corpus or model loads."""
    import medpeft.pretrain as pretrain_mod

    monkeypatch.setattr(pretrain_mod, "build_corpus", lambda *a: pytest.fail("built the corpus"))
    assert cli.main(["pretrain", "--model", "tiny-bert", "--out", str(tmp_path / "m")] + flags) == 2
    err = capsys.readouterr().err
    assert f"medpeft: error: {needle}" in err and "Traceback" not in err, err
