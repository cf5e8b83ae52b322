"""The benchmark end to end on tiny models (`--quick`): every figure is printed and positive. No timing
is asserted: the figures of tiny random models on a shared CPU mean nothing."""
from __future__ import annotations

import re

import pytest

from medpeft import bench
from medpeft.bench import cpu

NUMBER = r"([\d,]+(?:\.\d+)?)"


def figures(out: str, workload: str) -> dict[str, list[float]]:
    """{row name: [medpeft, plain, ratio]} of one workload's table in the printed output."""
    block = out.split(f"\n{workload}: ", 1)[1].split("\n\n", 1)[0]
    rows = {}
    for line in block.splitlines()[2:]:
        if line.startswith("  medpeft's summaries at"):
            continue
        found = re.match(rf"\s+(.+?)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x$", line)
        assert found, line
        rows[found.group(1)] = [float(found.group(k).replace(",", "")) for k in (2, 3, 4)]
    return rows


def test_quick_benchmark_prints_every_figure(capsys, assets_ready):
    assert bench.main(["--quick"]) == 0
    out = capsys.readouterr().out
    peak = re.search(r"fp32 matmul peak: ([\d.]+) GFLOP/s", out)
    assert peak and float(peak.group(1)) > 0
    summarization = figures(out, "summarization")
    rows = int(re.search(r"generation new tokens/s \((\d+) vs 8 per call\)", out).group(1))  # at least medpeft's eval batch
    assert rows >= 8
    assert set(summarization) == {"useful tokens/s (non-pad, training)", "% of its precision's matmul peak (4 FLOP/param/token)",
                                  "peak RSS, whole process (GiB)", f"generation new tokens/s ({rows} vs 8 per call)",
                                  "generation new tokens/s (8 per call on both)",
                                  "generated tokens per summary", "useful training tokens", "training seconds"}
    assert f"medpeft's summaries at {rows} and at 8 rows per call: identical" in out
    classification = figures(out, "classification")
    assert "useful tokens/s (non-pad, training)" in classification and "peak RSS, whole process (GiB)" in classification
    for rows in (summarization, classification):
        for name, values in rows.items():
            assert all(v > 0 for v in values), (name, values)
    # the same examples, cut the same way, on both sides: about the same useful tokens (re-tokenized text may differ a little)
    assert 0.9 < summarization["useful training tokens"][2] < 1.1
    assert "targets (issue 12)" in out


def test_each_sides_share_is_of_its_own_precisions_matmul_peak():
    """By hand: 4 FLOP x 100 params x 50 tokens/s = 20,000 FLOP/s; of a 40,000 peak 50 %, of 80,000 25 %."""
    w = cpu.QUICK["summarization"]
    side = {"params": 100, "tokens": 500, "train_seconds": 10.0, "peak_rss_bytes": 2**30}
    lines = cpu.table_lines(w, {"medpeft": side, "plain": side}, {"medpeft": 80_000.0, "plain": 40_000.0})
    share = next(line for line in lines if "matmul peak" in line).split()
    assert share[-3:] == ["25.0", "50.0", "0.50x"]
    decoded = dict(side, new_tokens=64, generation_seconds=1.0, new_tokens_8=64, generation_seconds_8=2.0, summaries=4,
                   generation_rows=4, differing_summaries=1)
    lines = cpu.table_lines(w, {"medpeft": decoded, "plain": dict(decoded, generation_seconds=2.0)}, {"medpeft": 1.0, "plain": 1.0})
    assert lines[-1] == "  medpeft's summaries at 4 and at 8 rows per call: 1 of 4 differ"


@pytest.mark.parametrize("asked, line", [({"medpeft": "bf16", "plain": "fp32"}, "medpeft bf16, plain fp32"),
                                          ({"medpeft": "bf16", "plain": "bf16"}, "both bf16"),
                                          ({"medpeft": "fp32", "plain": "fp32"}, "both fp32")])
def test_the_workload_line_names_each_sides_precision(asked, line):
    assert f", {line}, " in cpu.describe(cpu.FULL["summarization"], asked)


def test_precision_options_reach_each_side(monkeypatch):
    seen = []
    monkeypatch.setattr(cpu, "benchmark", lambda quick, precisions: seen.append(precisions))
    monkeypatch.setattr(cpu, "run_side", lambda side, w, path, precision: seen.append((side, precision)))
    assert bench.main(["--quick"]) == bench.main(["--precision", "fp32", "--plain-precision", "bf16"]) == 0
    assert bench.main(["--side", "plain", "--workload", "summarization", "--result", "x", "--precision", "bf16"]) == 0
    assert seen == [{"medpeft": "auto", "plain": "fp32"}, {"medpeft": "fp32", "plain": "bf16"}, ("plain", "bf16")]


def test_the_plain_pipeline_pads_to_max_length(assets_ready):
    from transformers import AutoTokenizer

    from medpeft.plan import plan_run

    w = cpu.QUICK["summarization"]
    plan = plan_run(cpu.experiment_config(w))
    tokenizer = AutoTokenizer.from_pretrained(plan.model_path)
    rows = cpu.plain_rows(w, plan.data, tokenizer)
    assert len(rows) == w.train_size and all(len(r["input_ids"]) == w.max_length for r in rows)
    for row in rows:  # labels on every real token, -100 on padding only
        assert [label == -100 for label in row["labels"]] == [m == 0 for m in row["attention_mask"]]
        assert 0 < sum(row["attention_mask"]) < w.max_length  # padded, never cut: source and summary are cut first


@pytest.mark.slow
def test_the_gpu_benchmark_runs_whole_on_tiny_shapes(capsys, assets_ready, tmp_path):
    """`--gpu --quick --ablate` on CPU: every workload's table and every ablation row, the same useful tokens
    on both sides, the JSON report. The sides run in this process under --quick; the figures mean nothing."""
    import json

    from medpeft.bench import gpu as bench_gpu

    assert bench.main(["--gpu", "--quick", "--ablate", "--json", str(tmp_path / "gpu.json")]) == 0
    out = capsys.readouterr().out
    assert "the figures mean nothing" in out and "targets (issue 28)" in out and "FAILED" not in out
    for name, w in bench_gpu.QUICK_WORKLOADS.items():
        block = out.split(f"\n{name}: ", 1)[1].split("\n\n", 1)[0]
        rows = {}
        for line in block.splitlines()[2:-1]:
            found = re.match(rf"\s+(.+?)\s+{NUMBER}\s+{NUMBER}\s+{NUMBER}x$", line)
            assert found, line
            rows[found.group(1)] = [float(found.group(k).replace(",", "")) for k in (2, 3, 4)]
        assert rows["useful training tokens"][0] == rows["useful training tokens"][1] > 0, name  # the same examples, cut alike
        assert all(v > 0 for v in rows["useful tokens/s (non-pad, training)"])
        assert any(key.startswith("generation new tokens/s") for key in rows) == bool(w.max_new_tokens)
        assert ("% of matmul peak" in block) == (not w.seq2seq)
    for lever in ["all levers as chosen", *bench_gpu.LEVERS]:
        assert re.search(rf"^  {re.escape(lever)}\s+(\d[\d,]*\s+[\d.]+\s+[\d.]+x|skipped: needs a CUDA GPU)$", out, re.M), lever
    report = json.loads((tmp_path / "gpu.json").read_text())
    assert set(report["workloads"]) == set(bench_gpu.QUICK_WORKLOADS) and set(report["ablation"]) >= set(bench_gpu.LEVERS)
    assert report["ablation"]["packing (opt-in)"]["levers"]["packing"] and not report["ablation"]["all levers as chosen"]["levers"]["packing"]
    assert report["ablation"]["pad_to_multiple_of"]["levers"]["pad_to_multiple_of"] == 1
