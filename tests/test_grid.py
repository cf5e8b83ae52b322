"""Grid-level behaviour that needs no training: sharding for clusters and baseline insertion."""
from __future__ import annotations

import pytest

from medpeft.config import ConfigError, expand_grid
from medpeft.grid import parse_shard, select_shard, with_baselines

from conftest import TINY_DATA, TINY_TRAIN

SPEC = {
    "base": {"task": "pubmed-conclusion", "model": "tiny-t5"},
    "grid": [
        {"method": ["full", "lora", "ia3", "prompt_tuning"], "seed": [0, 1, 2], },
        {"task": "pubmed-rct", "model": "tiny-bert", "method": ["lora", "dora"], "seed": [0, 1]},
    ],
}


def runs_of(spec):
    return with_baselines(expand_grid(spec, name="g").runs)


@pytest.mark.parametrize("count", [1, 2, 3, 5, 7, 40])
def test_shards_cover_the_grid_exactly_once(count):
    spec = {**SPEC, "grid": [dict(SPEC["grid"][0], method=["lora", "dora"]), SPEC["grid"][1]]}
    runs = runs_of(spec)
    ids = [cfg.run_id for i in range(count) for cfg in select_shard(runs, (i, count))]
    assert sorted(ids) == sorted(cfg.run_id for cfg in runs)  # every run once: no gap, no duplicate
    sizes = [len(select_shard(runs, (i, count))) for i in range(count)]
    assert max(sizes) - min(sizes) <= 1  # balanced


def test_shards_do_not_depend_on_the_order_of_the_grid_file():
    spec = {**SPEC, "grid": [dict(SPEC["grid"][0], method=["lora", "dora"]), SPEC["grid"][1]]}
    reordered = {**spec, "grid": list(reversed(spec["grid"]))}
    for i in range(3):
        assert [c.run_id for c in select_shard(runs_of(spec), (i, 3))] == [c.run_id for c in select_shard(runs_of(reordered), (i, 3))]


@pytest.mark.parametrize("text", ["3/3", "-1/2", "1/0", "a/b", "2", "1/2/3"])
def test_bad_shard_is_a_clear_error(text):
    with pytest.raises(ConfigError, match="shard"):
        parse_shard(text)


def test_parse_shard():
    assert parse_shard("0/4") == (0, 4)
    assert parse_shard("3/4") == (3, 4)


def test_one_baseline_per_model_and_task():
    spec = {"base": {"task": "pubmed-rct", "model": "tiny-bert"}, "grid": {"method": ["full", "lora"], "seed": [0, 1]}}
    runs = runs_of(spec)
    baselines = [c for c in runs if c.method == "untrained"]
    assert len(baselines) == 1 and baselines[0].seed == 0
    assert len(runs) == 5


@pytest.mark.parametrize("sizes", [[30, 100], [100, 30]])
def test_a_learning_curves_baseline_takes_the_largest_training_set_whatever_the_order(sizes):
    """The baseline copied the first run's data: a curve's smallest point (or a few-shot sample), whose
    majority class can be a tie."""
    spec = {"base": {"task": "pubmed-rct", "model": "tiny-bert", "method": "lora"},
            "grid": [{"data.train_size": sizes}, {"data.per_class": [2, 8], "data.train_size": 50}]}
    (baseline,) = [c for c in runs_of(spec) if c.method == "untrained"]
    assert baseline.data.train_size == 100 and baseline.data.per_class is None


def test_a_few_shot_baselines_majority_class_is_the_whole_training_splits(tmp_path, assets_ready):
    """A user file, 3 of 4 training notes 'routine'; with data.per_class: [2] the baseline's prior came
    from a balanced 2 + 2 sample, a tie broken to the first label, and it predicted 'acute' everywhere (25 % accuracy on a test
    set that is 75 % routine)."""
    import json

    from medpeft.grid import run_grid
    from medpeft.run.record import load_results

    path = tmp_path / "notes.jsonl"
    path.write_text("".join(json.dumps({"text": f"Visit {i}: the patient was seen today.", "label": "acute" if i % 4 == 0 else "routine",
                                        "split": "test" if i < 8 else "train"}) + "\n" for i in range(40)))
    spec = {"base": {"task": {"type": "classification", "path": str(path), "text_field": "text", "target_field": "label"},
                     "model": "tiny-bert", "method": "lora", "data": {"max_source_tokens": 32}, "train": TINY_TRAIN},
            "grid": {"data.per_class": [2]}}
    outcome = run_grid(expand_grid(spec, name="few"), tmp_path / "runs", log=lambda *a: None)
    (baseline,) = [r for r in load_results(outcome.grid_dir) if r.method == "untrained"]
    predictions = [json.loads(line)["prediction"] for line in (outcome.grid_dir / baseline.run_id / "predictions.jsonl").open()]
    assert set(predictions) == {"routine"} and baseline.metrics["accuracy"] == pytest.approx(0.75)


def test_qlora_on_a_cpu_machine_fails_before_training(tmp_path, monkeypatch):
    import torch

    from medpeft.grid import run_grid

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    grid = expand_grid({"base": {"task": "pubmed-rct", "model": "tiny-bert", "method": "qlora"}}, name="q")
    with pytest.raises(ConfigError, match="CUDA GPU.*method: lora"):
        run_grid(grid, tmp_path)
    assert not (tmp_path / "q").exists()  # nothing ran, nothing written


def test_fp16_on_a_cpu_machine_fails_before_training(tmp_path, monkeypatch):
    import torch

    from medpeft.grid import run_grid

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    grid = expand_grid({"base": {"task": "pubmed-rct", "model": "tiny-bert", "method": "lora",
                                 "train": {"precision": "fp16"}}}, name="h")
    with pytest.raises(ConfigError, match="fp16 needs a CUDA GPU"):
        run_grid(grid, tmp_path)


def test_fused_kernels_on_a_cpu_machine_fail_before_training(tmp_path, monkeypatch):
    import torch

    from medpeft.grid import run_grid

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    grid = expand_grid({"base": {"task": "pubmed-rct", "model": "tiny-bert", "method": "lora",
                                 "train": {"fused_kernels": True}}}, name="k")
    with pytest.raises(ConfigError, match="train.fused_kernels: Liger's kernels are Triton kernels for CUDA GPUs"):
        run_grid(grid, tmp_path)
    assert not (tmp_path / "k").exists()


def test_fused_kernels_without_the_package_name_it(monkeypatch):
    import importlib.util

    import torch

    from medpeft.methods import check_hardware

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match="pip install liger-kernel"):
        check_hardware("lora", "bf16", fused_kernels=True)


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="Liger's kernels need a CUDA GPU")
def test_fused_kernels_train_on_a_gpu(tmp_path):
    pytest.importorskip("liger_kernel")
    from medpeft.grid import run_grid

    grid = expand_grid({"base": {"task": "pubmed-conclusion", "model": "tiny-llama", "method": "lora", "data": TINY_DATA,
                                 "train": dict(TINY_TRAIN, fused_kernels=True)}}, name="liger")
    from medpeft.dist import default_precision
    from medpeft.run.record import load_results

    results = [r for r in load_results(run_grid(grid, tmp_path).grid_dir) if r.method == "lora"]
    assert results and all(r.ok for r in results)
    assert results[0].config["train"]["fused_kernels"] is True and results[0].config["train"]["precision"] == default_precision()


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="Liger's kernels need a CUDA GPU")
@pytest.mark.parametrize("method", ["lora", "full"])
def test_fused_kernels_train_a_real_shaped_decoder(method, tmp_path, assets_ready):
    """SmolLM2-135M (30 layers, tied embeddings, a 49,152-word head) with Liger's kernels and a validation
    split: every run failed with 'skip_logits is True, but labels and shift_labels are None' (the Trainer
    asks Liger to skip the logits when it evaluates, and the labelled-position loss kept the labels from
    it); the tiny-llama test, without a validation split, trained. The loss must equal the run's without
    the kernels (the same labelled tokens, summed over the same count)."""
    pytest.importorskip("liger_kernel")
    from medpeft.grid import run_grid
    from medpeft.run.record import load_results

    losses = {}
    for fused in (True, None):
        train = {"max_steps": 3, "batch_size": 4, "eval_batch_size": 4, "fused_kernels": fused}
        spec = {"base": {"task": "pubmed-conclusion", "model": "smollm2-135m", "method": method,
                         "data": dict(TINY_DATA, val_size=4, max_source_tokens=256, max_target_tokens=64), "train": train}}
        outcome = run_grid(expand_grid(spec, name=f"liger-{fused}"), tmp_path)
        trained = [r for r in load_results(outcome.grid_dir) if r.method == method]
        assert outcome.exit_code == 0 and trained and trained[0].ok, [r.error for r in outcome.failed]
        losses[fused] = (trained[0].training["train_loss"], trained[0].training["val_loss"])
    assert losses[True] == pytest.approx(losses[None], rel=2e-2)  # bf16 kernels against bf16 logits


def write_grid_file(folder, name: str = "shared", method: str = "lora"):
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "grid.yaml"
    path.write_text(f"name: {name}\nbase: {{task: pubmed-rct, model: tiny-bert, method: {method}}}\n")
    return path


@pytest.fixture
def nothing_runs(monkeypatch):
    """run_grid up to its runs: no data checked, no training, no report (the grid folder's record is what is tested)."""
    import medpeft.grid as grid_module

    monkeypatch.setattr(grid_module, "plan_runs", lambda configs, online: [])
    monkeypatch.setattr(grid_module, "run_plans", lambda *a, **k: [])
    monkeypatch.setattr(grid_module, "write_outputs", lambda *a, **k: [])
    return grid_module.run_grid


def test_a_second_grid_file_with_the_same_name_is_refused_before_anything_runs(tmp_path, nothing_runs, monkeypatch):
    import medpeft.grid as grid_module
    from medpeft.config import load_grid

    first, second = write_grid_file(tmp_path / "a"), write_grid_file(tmp_path / "b", method="dora")
    nothing_runs(load_grid(first), tmp_path / "runs")
    monkeypatch.setattr(grid_module, "plan_runs", lambda *a: pytest.fail("planned a run of the second grid"))
    with pytest.raises(ConfigError) as info:
        nothing_runs(load_grid(second), tmp_path / "runs")
    message = str(info.value)
    assert str(first) in message and str(second) in message and str(tmp_path / "runs" / "shared") in message
    assert "another `name:`" in message and "--runs-dir" in message  # the fix
    monkeypatch.setattr(grid_module, "plan_runs", lambda configs, online: [])
    nothing_runs(load_grid(second), tmp_path / "elsewhere")  # another --runs-dir: its own folder


def test_the_same_grid_file_edited_and_older_folders_run_on(tmp_path, nothing_runs, caplog):
    from medpeft.config import load_grid
    from medpeft.run.owner import GRID_MARKER

    path = write_grid_file(tmp_path / "a")
    nothing_runs(load_grid(path), tmp_path / "runs")
    write_grid_file(tmp_path / "a", method="dora")  # the same file, edited
    nothing_runs(load_grid(path), tmp_path / "runs")
    (tmp_path / "runs" / "shared" / GRID_MARKER).unlink()  # a folder from a medpeft before the record
    other = write_grid_file(tmp_path / "b")
    nothing_runs(load_grid(other), tmp_path / "runs")  # adopted, then recorded
    other.unlink()  # the recorded file moved away: the folder is taken over, with a warning
    nothing_runs(load_grid(write_grid_file(tmp_path / "c")), tmp_path / "runs")
    assert "which is gone" in caplog.text
    nothing_runs(expand_grid({"base": {"task": "pubmed-rct", "model": "tiny-bert", "method": "lora"}}, name="shared"), tmp_path / "runs")
