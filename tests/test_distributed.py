"""`medpeft run` under `accelerate launch` with 2 CPU processes (gloo DDP) matches a single process."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from medpeft import cli

GRID = """
name: ddp
base:
  task: pubmed-rct
  model: tiny-bert
  method: lora
  data: {train_size: 16, val_size: 8, test_size: 16, max_source_tokens: 32}
  train: {max_steps: 3, batch_size: 8, lr: 1.0e-2}
"""


def lora_result(runs_dir):
    [path] = (runs_dir / "ddp").glob("*.lora.*/result.json")
    return json.loads(path.read_text())


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path, assets_ready):
    grid = tmp_path / "ddp.yaml"
    grid.write_text(GRID)
    assert cli.main(["run", str(grid), "--runs-dir", str(tmp_path / "single")]) == 0
    # Two processes with 4 examples each make the same global batch of 8 as the single run.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
           "-m", "medpeft", "run", str(grid), "--runs-dir", str(tmp_path / "ddp"), "--set", "train.batch_size=4"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    single, ddp = lora_result(tmp_path / "single"), lora_result(tmp_path / "ddp")
    assert ddp["status"] == "ok" and ddp["training"]["steps"] == single["training"]["steps"] == 3
    # Both processes' tokens are counted (a lone rank would see about half).
    assert ddp["training"]["train_tokens"] == pytest.approx(single["training"]["train_tokens"], rel=0.1)
    # Same global batch, same steps: the losses agree up to data order and dropout (a doubled
    # DDP loss, a transformers pitfall for mean-reduced heads, would be 100 % off).
    assert ddp["training"]["train_loss"] == pytest.approx(single["training"]["train_loss"], rel=0.02)
    assert ddp["training"]["val_loss"] == pytest.approx(single["training"]["val_loss"], rel=0.02)
    # One writer: exactly one result per run, no stray temporary files from the second process.
    files = sorted(p.name for p in (tmp_path / "ddp" / "ddp").rglob("*") if p.name.startswith("."))
    assert files == []
