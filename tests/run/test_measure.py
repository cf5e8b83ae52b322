"""Cost measurements: parameters counted as peft counts them, and a run's peak memory that does not
depend on the runs before it in the same process."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from medpeft.run.measure import count_parameters


class Params4bit(torch.nn.Parameter):
    """Stands in for bitsandbytes' packed 4-bit weight (two weights per byte of uint8 storage)."""

    quant_storage = torch.uint8


def test_4bit_weights_are_counted_unpacked_as_peft_counts_them():
    from peft import PeftModel

    model = torch.nn.Module()
    model.packed = Params4bit(torch.zeros(50, dtype=torch.uint8), requires_grad=False)  # 100 weights
    model.adapter = torch.nn.Parameter(torch.zeros(10))
    counts = count_parameters(model)
    assert (counts["trainable_params"], counts["total_params"]) == (10, 110)  # numel() alone says 60: % doubled
    assert (counts["trainable_params"], counts["total_params"]) == PeftModel.get_nb_trainable_parameters(model)


def test_tied_weights_count_once():
    model = torch.nn.Module()
    model.a = torch.nn.Linear(4, 4, bias=False)
    model.b = torch.nn.Linear(4, 4, bias=False)
    model.b.weight = model.a.weight
    assert count_parameters(model)["total_params"] == 16


PEAK_SCRIPT = textwrap.dedent("""
    import torch
    from medpeft.run.measure import peak_memory_bytes, reset_peak_memory

    def current_rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024

    class Run:  # an earlier run's model, kept alive only by a reference cycle (as Trainer objects are)
        pass

    reset_peak_memory()  # the process's first run (it loads the libraries every run needs)
    before = current_rss()
    earlier = Run()
    earlier.weights = torch.ones(150_000_000)  # 600 MB, touched
    earlier.me = earlier
    del earlier
    reset_peak_memory()
    this_run = torch.ones(1_000_000)  # 4 MB
    print((peak_memory_bytes() - before) / 2**20)
""")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the RSS peak reset needs Linux")
def test_a_runs_peak_does_not_include_an_earlier_runs_memory():
    out = subprocess.run([sys.executable, "-c", PEAK_SCRIPT], capture_output=True, text=True, timeout=120, check=True)
    grown_mib = float(out.stdout.strip().splitlines()[-1])
    assert grown_mib < 150, f"peak is {grown_mib:.0f} MiB above the start: the earlier run's 572 MiB were counted"


LEFT_SCRIPT = textwrap.dedent("""
    import torch
    from medpeft.run.measure import peak_memory_bytes, process_status_bytes, reset_peak_memory

    reset_peak_memory()  # the process's first run
    first_start = process_status_bytes("VmRSS")
    first = torch.ones(100_000_000)  # 400 MB: the first run's model
    first_peak = peak_memory_bytes()
    del first
    left_behind = torch.ones(75_000_000)  # 300 MB the first run leaves resident (a kernel cache, a held heap)
    reset_peak_memory()  # the second run, the same work
    second = torch.ones(100_000_000)
    print(first_peak - first_start, peak_memory_bytes() - first_start)
""")


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the RSS peak reset needs Linux")
def test_a_runs_peak_does_not_grow_with_what_earlier_runs_left_resident():
    """Two runs of the same work in one process have the same peak, whatever the first left behind: in a grid
    (one process) the peaks rose with each run's place, so three seeds of one config spread over 0.45 GiB and
    the method that ran first looked the lightest."""
    out = subprocess.run([sys.executable, "-c", LEFT_SCRIPT], capture_output=True, text=True, timeout=300, check=True)
    first, second = (int(x) / 2**20 for x in out.stdout.split())
    assert first > 350 and abs(second - first) < 50, f"first run {first:.0f} MiB, the same work after it {second:.0f} MiB"


def test_the_commit_is_read_once_per_process(monkeypatch):
    """A grid keeps running the code it imported; a checkout moved on mid-grid must not be recorded
    for its later runs."""
    import subprocess

    from medpeft.run import measure

    measure.git_commit.cache_clear()
    calls = []
    answers = iter(["aaa", "", "bbb", ""])

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, stdout=next(answers), stderr="")

    monkeypatch.setattr(measure.subprocess, "run", fake_run)
    try:
        assert measure.git_commit() == "aaa"
        assert measure.git_commit() == "aaa"  # the checkout now says bbb: not asked again
        assert len(calls) == 2  # rev-parse and status, once
    finally:
        measure.git_commit.cache_clear()
