"""One run end to end on tiny models (the result contract, adapter reload, seeds) and whole grids
(baselines, summary, resume, failures, atomic writes)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from medpeft import files
from medpeft import grid as grid_module
from medpeft.config import config_from_dict, expand_grid
from medpeft.models import load_model, resolve_model
from medpeft.plan import resolve_config
from medpeft.registry import TASKS
from medpeft.run import execute, record
from medpeft.run.encode import encode_examples
from medpeft.run.kinds import KINDS, decoding
from medpeft.run.metrics import ROUGE_KEYS
from medpeft.run.predict import generate_texts, predict_probs
from medpeft.run.record import write_atomic, write_json

from conftest import TINY_DATA, TINY_TRAIN
from helpers import run_config

CLASSIFICATION_KEYS = {"accuracy", "macro_f1", "auroc"}
EFFICIENCY_KEYS = {"trainable_params", "total_params", "trainable_pct", "train_seconds", "eval_seconds",
                   "train_tokens_per_second", "peak_memory_bytes", "adapter_bytes", "adapter_folder_bytes"}
# A high learning rate, so a trained adapter visibly changes predictions (a reload test must be able to fail).
LR = 1e-2
RUNS = {  # name -> (task, model, method, seed)
    "t5-lora": ("pubmed-conclusion", "tiny-t5", "lora", 0),
    "llama-lora": ("pubmed-conclusion", "tiny-llama", "lora", 0),
    "bert-lora": ("pubmed-rct", "tiny-bert", "lora", 0),
    "bert-prompt": ("pubmed-rct", "tiny-bert", "prompt_tuning", 0),
    "bert-full": ("pubmed-rct", "tiny-bert", "full", 0),
}


def tiny_config(task, model, method, seed=0, **train_args):
    return config_from_dict({"task": task, "model": model, "method": method, "seed": seed,
                             "data": dict(TINY_DATA, val_size=2), "train": {**TINY_TRAIN, "lr": LR, **train_args}})


@pytest.fixture(scope="module")
def finished(tmp_path_factory, assets_ready):
    """Run each named configuration at most once per module; return (config, run_dir, result)."""
    cache = {}

    def get(name: str, copy: int = 0):
        key = (name, copy)
        if key not in cache:
            cfg = resolve_config(tiny_config(*RUNS[name]))  # its run id is the folder's and the result's
            run_dir = tmp_path_factory.mktemp(f"{name}-{copy}") / cfg.run_id
            cache[key] = cfg, run_dir, run_config(cfg, run_dir)
        return cache[key]

    return get


def read_predictions(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "predictions.jsonl").read_text().splitlines()]


def reload_and_predict(cfg, adapter_dir: Path | None):
    """Predictions of a freshly loaded base model (with the saved adapter, unless None) on the test split."""
    from peft import PeftModel

    task = TASKS[cfg.task].load(cfg.data)
    path = resolve_model(cfg.model, online=False)
    kind = KINDS["seq_cls" if task.type == "classification" else ("seq2seq" if cfg.model == "tiny-t5" else "causal")]
    torch.manual_seed(12345)  # a different random head than in training: only the adapter may restore it
    model, tokenizer, _ = load_model(path, kind.auto_class, task.labels if kind.new_head else None)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, adapter_dir)
    rows, _ = encode_examples(task.splits["test"], tokenizer, kind, task.instruction, cfg.data, task.labels, for_generation=True)
    device = torch.device("cpu")
    if kind.new_head:
        probs = predict_probs(model, tokenizer, rows, cfg.train.eval_batch_size, device)
        return [task.labels[int(p.argmax())] for p in probs], probs
    texts = generate_texts(model, tokenizer, rows, kind.name == "causal", decoding(cfg), cfg.train.eval_batch_size, device)
    return texts, None


def adapter_tensors(run_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(run_dir / "adapter" / "adapter_model.safetensors")


# --- one run -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["t5-lora", "llama-lora", "bert-lora", "bert-full"])
def test_result_contract(finished, name):
    cfg, run_dir, result = finished(name)
    on_disk = json.loads((run_dir / "result.json").read_text())
    assert on_disk == json.loads(json.dumps(result.to_json(), default=str))
    assert "traceback" not in on_disk and on_disk["variant"] == {}
    task = TASKS[cfg.task].load(cfg.data)

    assert on_disk["run_id"] == cfg.run_id == run_dir.name
    assert on_disk["status"] == "ok" and on_disk["error"] is None
    assert (on_disk["model"], on_disk["method"], on_disk["task"], on_disk["seed"]) == (cfg.model, cfg.method, cfg.task, cfg.seed)
    assert config_from_dict(on_disk["config"]).run_id == cfg.run_id  # self-describing: the config rebuilds the run

    metrics = on_disk["metrics"]
    assert set(metrics) == (set(ROUGE_KEYS) if task.type == "summarization" else CLASSIFICATION_KEYS)
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in metrics.values()), metrics

    eff = on_disk["efficiency"]
    assert EFFICIENCY_KEYS <= set(eff)
    assert 0 < eff["trainable_params"] <= eff["total_params"]
    assert eff["trainable_pct"] == pytest.approx(100 * eff["trainable_params"] / eff["total_params"])
    if cfg.method == "full":
        assert eff["trainable_pct"] == 100.0
    else:
        assert eff["trainable_pct"] < 10.0
    assert eff["train_seconds"] > 0 and eff["eval_seconds"] > 0 and eff["train_tokens_per_second"] > 0
    assert eff["peak_memory_bytes"] > 0
    files = [f for f in (run_dir / "adapter").rglob("*") if f.is_file() and f.name != "README.md"]
    assert eff["adapter_folder_bytes"] == sum(f.stat().st_size for f in files)  # the model card is rewritten by reports
    weights = [f for f in files if f.suffix == ".safetensors"]  # no README, configs or tokenizer files
    assert eff["adapter_bytes"] == sum(f.stat().st_size for f in weights) > 0 and weights
    assert on_disk["training"]["steps"] == cfg.train.max_steps

    env = on_disk["env"]
    assert {"versions", "git_commit", "device"} <= set(env)
    assert {"torch", "transformers", "peft", "medpeft"} <= set(env["versions"]) and env["versions"]["peft"]
    assert env["git_commit"] and env["device"]

    preds = read_predictions(run_dir)
    assert [p["id"] for p in preds] == [ex["id"] for ex in task.splits["test"]]
    assert len(preds) == cfg.data.test_size
    for pred, ex in zip(preds, task.splits["test"]):
        assert {"id", "input", "reference", "prediction"} <= set(pred)
        assert (pred["input"], pred["reference"]) == (ex["text"], ex["target"])
        assert isinstance(pred["prediction"], str)
        if task.labels:
            assert pred["prediction"] in task.labels

    adapter = run_dir / "adapter"
    assert adapter.is_dir()
    if cfg.method == "full":  # a whole, self-contained model
        assert (adapter / "config.json").is_file() and (adapter / "model.safetensors").is_file()
    else:
        assert (adapter / "adapter_config.json").is_file() and (adapter / "adapter_model.safetensors").is_file()
    assert not (run_dir / "trainer").exists()  # trainer scratch space is cleaned up


@pytest.mark.parametrize("name", ["llama-lora", "bert-lora", "bert-prompt"])
def test_saved_adapter_reloads_to_identical_predictions(finished, name):
    cfg, run_dir, _ = finished(name)
    saved = read_predictions(run_dir)
    predictions, probs = reload_and_predict(cfg, run_dir / "adapter")
    assert predictions == [p["prediction"] for p in saved]
    if probs is not None:
        np.testing.assert_allclose(probs, [p["probs"] for p in saved], rtol=0, atol=2e-6)
    # ...and the test is sensitive: the base model alone predicts something else.
    base_predictions, base_probs = reload_and_predict(cfg, None)
    if probs is not None:
        assert not np.allclose(base_probs, probs, atol=1e-3)
    else:
        assert base_predictions != predictions


@pytest.mark.parametrize("name", ["bert-lora", "llama-lora"])
def test_same_config_twice_gives_identical_results(finished, name):
    _, first_dir, first = finished(name)
    _, second_dir, second = finished(name, copy=1)
    assert first_dir != second_dir
    assert second.metrics == first.metrics
    assert second.training["train_loss"] == first.training["train_loss"]
    assert read_predictions(second_dir) == read_predictions(first_dir)
    a, b = adapter_tensors(first_dir), adapter_tensors(second_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_different_seed_gives_a_different_adapter(finished, tmp_path):
    cfg, run_dir, _ = finished("bert-lora")
    other = tiny_config(cfg.task, cfg.model, cfg.method, seed=1)
    assert other.run_id != cfg.run_id
    run_config(other, tmp_path / other.run_id)
    a, b = adapter_tensors(run_dir), adapter_tensors(tmp_path / other.run_id)
    assert a.keys() == b.keys()
    for part in ("lora_A", "classifier"):  # the method's init and the new head's init both follow the seed
        keys = [k for k in a if part in k]
        assert keys and all(not torch.equal(a[k], b[k]) for k in keys), part


# --- grids ---------------------------------------------------------------------------


def tiny_grid(name: str, methods=("lora", "ia3")):
    spec = {"base": {"task": "pubmed-rct", "model": "tiny-bert", "data": dict(TINY_DATA), "train": dict(TINY_TRAIN)},
            "grid": {"method": list(methods)}}
    return expand_grid(spec, name=name)


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory, assets_ready):
    grid = tiny_grid("two-methods")
    runs_dir = tmp_path_factory.mktemp("runs")
    grid_dir = grid_module.run_grid(grid, runs_dir, log=lambda *a: None).grid_dir
    return grid, grid_dir


def test_grid_writes_summary_with_the_untrained_baseline(grid_run):
    grid, grid_dir = grid_run
    assert grid_dir.name == "two-methods"
    run_dirs = sorted(d for d in grid_dir.iterdir() if d.is_dir())
    methods = sorted(json.loads((d / "result.json").read_text())["method"] for d in run_dirs)
    assert methods == ["ia3", "lora", "untrained"]
    assert all(json.loads((d / "result.json").read_text())["status"] == "ok" for d in run_dirs)
    untrained = next(d for d in run_dirs if ".untrained." in d.name)
    assert not (untrained / "adapter").exists()
    assert json.loads((untrained / "result.json").read_text())["efficiency"]["trainable_params"] == 0
    if Path("/proc/self/clear_refs").exists() and not torch.cuda.is_available():  # CPU on Linux: the peak's correction
        left = [json.loads((d / "result.json").read_text())["efficiency"]["earlier_runs_resident_bytes"] for d in run_dirs]
        assert all(isinstance(v, int) and v >= 0 for v in left)

    summary = pd.read_csv(grid_dir / "summary.csv")
    assert sorted(summary["method"]) == ["ia3", "lora", "untrained"]
    assert set(summary["task"]) == {"pubmed-rct"} and set(summary["model"]) == {"tiny-bert"}
    assert (summary["seeds"] == 1).all()
    assert {"accuracy_mean", "macro_f1_mean", "auroc_mean", "trainable_params_mean"} <= set(summary.columns)
    markdown = (grid_dir / "summary.md").read_text()
    assert "### pubmed-rct" in markdown
    for method in ("untrained", "lora", "ia3"):
        assert f"| tiny-bert | {method} |" in markdown


def test_the_report_says_a_classifiers_untrained_baseline_is_its_majority_class(grid_run):
    """A classifier's untrained row is no model at all (a random head is replaced by the training split's
    majority class); the report called it "untrained baseline" and nothing else, as if the model had run."""
    _, grid_dir = grid_run
    untrained = next(d for d in grid_dir.iterdir() if ".untrained." in d.name)
    result = json.loads((untrained / "result.json").read_text())
    assert result["evaluation"]["baseline"] == "the training split's majority class for every example"
    predictions = read_predictions(untrained)
    assert len({p["prediction"] for p in predictions}) == 1  # what it says it is
    report = (grid_dir / "report.md").read_text()
    assert ("(no model ran: the training split's majority class for every example, since a new head is random "
            "before training)") in " ".join(report.split())
    trained = next(d for d in grid_dir.iterdir() if ".lora." in d.name)
    assert "baseline" not in json.loads((trained / "result.json").read_text())["evaluation"]


def test_second_grid_run_skips_finished_runs(grid_run, monkeypatch):
    grid, grid_dir = grid_run
    stamps = {p: p.stat().st_mtime_ns for p in grid_dir.glob("*/result.json")}
    assert len(stamps) == 3

    def must_not_run(*args, **kwargs):
        raise AssertionError("a finished run was run again")

    monkeypatch.setattr(execute, "run_experiment", must_not_run)
    lines = []
    grid_module.run_grid(grid, grid_dir.parent, log=lines.append)
    assert {p: p.stat().st_mtime_ns for p in grid_dir.glob("*/result.json")} == stamps
    assert "3 already finished" in lines[0]


def test_failed_run_is_recorded_and_the_grid_goes_on_then_resumes(tmp_path, monkeypatch, assets_ready):
    real = execute.run_experiment
    calls = []

    def flaky(plan, run_dir):
        calls.append(plan.config.method)
        if plan.config.method == "lora":
            raise RuntimeError("boom: out of memory")
        return real(plan, run_dir)

    monkeypatch.setattr(execute, "run_experiment", flaky)
    grid = tiny_grid("flaky", methods=("lora", "ia3"))
    grid_dir = grid_module.run_grid(grid, tmp_path, log=lambda *a: None).grid_dir
    assert calls == ["untrained", "lora", "ia3"]  # the grid went on after the failure
    by_method = {r.method: r for r in record.load_results(grid_dir)}
    failed = by_method["lora"]
    assert failed.status is record.Status.FAILED and failed.error == "RuntimeError: boom: out of memory"
    lora_id = next(c.run_id for c in grid_module.grid_configs(grid) if c.method == "lora")
    assert "RuntimeError" in failed.traceback and failed.run_id == lora_id
    assert json.loads((grid_dir / lora_id / "result.json").read_text())["status"] == "failed"
    assert by_method["ia3"].ok and by_method["untrained"].ok
    assert sorted(pd.read_csv(grid_dir / "summary.csv")["method"]) == ["ia3", "untrained"]

    # Resuming retries only the failed run.
    calls.clear()
    monkeypatch.setattr(execute, "run_experiment", lambda plan, run_dir: (calls.append(plan.config.method), real(plan, run_dir))[1])
    grid_module.run_grid(grid, tmp_path, log=lambda *a: None)
    assert calls == ["lora"]
    assert {r.method: r.status.value for r in record.load_results(grid_dir)} == {"lora": "ok", "ia3": "ok", "untrained": "ok"}


def test_nan_loss_is_a_failed_run(tmp_path, assets_ready):
    cfg = tiny_config("pubmed-rct", "tiny-bert", "full", lr=1e30)
    with pytest.raises(FloatingPointError, match="train.lr"):
        run_config(cfg, tmp_path / cfg.run_id)
    assert not (tmp_path / cfg.run_id / "result.json").exists()


# --- atomic writes -------------------------------------------------------------------


def interrupt_fsync(monkeypatch):
    def fail(fd):
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(files.os, "fsync", fail)


def test_interrupted_write_keeps_the_previous_result(tmp_path, monkeypatch):
    path = tmp_path / "run" / "result.json"
    write_json(path, {"status": "ok", "n": 1})
    interrupt_fsync(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        write_json(path, {"status": "ok", "n": 2})
    assert json.loads(path.read_text()) == {"status": "ok", "n": 1}


def test_interrupted_first_write_leaves_no_result(tmp_path, monkeypatch):
    interrupt_fsync(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        write_json(tmp_path / "result.json", {"status": "ok"})
    assert not (tmp_path / "result.json").exists()
    assert record.read_result(tmp_path) is None and not record.is_finished(tmp_path)


def test_interrupted_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    interrupt_fsync(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(tmp_path / "result.json", "{}")
    assert os.listdir(tmp_path) == []


def test_truncated_result_counts_as_unfinished(tmp_path):
    (tmp_path / "result.json").write_text('{"status": "ok", "metr')
    assert record.read_result(tmp_path) is None and not record.is_finished(tmp_path)


def test_gradient_checkpointing_gives_the_same_training(tmp_path, assets_ready):
    """Recomputing activations changes memory and time, not the result (same seed, no dropout noise)."""
    plain = run_config(tiny_config("pubmed-conclusion", "tiny-llama", "lora"), tmp_path / "a")
    ckpt = run_config(tiny_config("pubmed-conclusion", "tiny-llama", "lora", gradient_checkpointing=True), tmp_path / "b")
    assert ckpt.config["train"]["gradient_checkpointing"] is True
    assert ckpt.training["gradient_checkpointing"] is True and plain.training["gradient_checkpointing"] is False
    assert ckpt.training["train_loss"] == pytest.approx(plain.training["train_loss"], rel=1e-4)


@pytest.mark.parametrize("on", [True, False])
def test_recomputation_is_asked_by_the_name_this_transformers_takes(tmp_path, on):
    """transformers 5.23 renamed gradient_checkpointing to activation_checkpointing; the old name warned on
    every run (FutureWarning, 'removed in v6')."""
    import warnings

    from transformers import TrainingArguments

    from medpeft.run.fit import recomputation_arguments

    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, **recomputation_arguments(TrainingArguments, on))
    assert args.gradient_checkpointing is on and args.gradient_checkpointing_kwargs == {"use_reentrant": False}


@pytest.mark.parametrize("metric", ["loss", "primary"])
def test_a_loss_scored_tuning_trial_generates_no_summary(tmp_path, monkeypatch, assets_ready, metric):
    """A trial of `tune: {metric: loss}` is scored by its validation loss alone, under the metric name
    tune.py records ("val_loss"): it must not generate the validation summaries (issue 29: the run checked
    for "loss" and generated every one of them for nothing). A primary-scored trial still generates them."""
    from medpeft import tune

    grid = expand_grid({"base": {"task": "pubmed-conclusion", "model": "tiny-llama", "data": dict(TINY_DATA, val_size=2),
                                 "train": dict(TINY_TRAIN)},
                        "grid": [{"method": "lora"}], "tune": {"train.lr": [LR], "metric": metric}}, name="g")
    (group,) = tune.tuning_groups(grid_module.grid_configs(grid))
    trial = tune.trial_config(group, {"train.lr": LR}, tune.metric_name(group.tune, "summarization"))
    generated = []
    from medpeft.run import kinds

    real = kinds.generate_texts
    monkeypatch.setattr(kinds, "generate_texts", lambda *a, **k: generated.append(1) or real(*a, **k))
    result = run_config(trial, tmp_path / trial.run_id)
    assert result.ok and result.tuning_trial and result.evaluated_on == "validation" and result.fit.val_loss is not None
    if metric == "loss":
        assert generated == [] and result.metrics == {}
    else:
        assert generated and "rouge1" in result.metrics
