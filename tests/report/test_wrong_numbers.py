"""The wrong numbers an independent recomputation found in the report (issue 29), each checked against
scipy or a hand computation: pooled tuned/untuned runs, a Δ from other examples than its CI, NaN scored
as significant, wording, multiple comparisons."""
from __future__ import annotations

import math

import numpy as np
import pytest
from report_fixtures import base_config, summary_rows, write_run
from scipy import stats as scipy_stats

from medpeft.report import compare, sections, stats
from medpeft.report import frame as frames

UNTUNED = (0.43, 0.52, 0.57)  # lora at the default lr 3e-4, seeds 0-2
TUNED = (0.41, 0.58, 0.53)  # lora after `tune: auto`, which chose 3e-4 (one of the auto candidates)
FULL = (0.55, 0.49, 0.60)


def write_tuned_and_untuned(grid):
    """The issue's grid folder: 3 untuned LoRA runs at lr 3e-4, 3 tuned ones that chose 3e-4, and full."""
    tuning = {"role": "final", "group": "g1", "chosen": {"train.lr": 3e-4},
              "over": {"space": {"train.lr": [1e-4, 3e-4, 1e-3]}, "metric": "rouge1", "search": "grid"}}
    for seed in range(3):
        untuned = base_config("t", "m", "lora", seed, train__lr=3e-4)
        write_run(grid, f"t.m.lora.seed{seed}", untuned, summary_rows([UNTUNED[seed]] * 20), "summarization")
        tuned = dict(base_config("t", "m", "lora", seed, train__lr=3e-4), tuning=tuning)
        write_run(grid, f"t.m.lora.tuned.seed{seed}", tuned, summary_rows([TUNED[seed]] * 20), "summarization")
        full = base_config("t", "m", "full", seed, train__lr=3e-4)
        write_run(grid, f"t.m.full.seed{seed}", full, summary_rows([FULL[seed]] * 20), "summarization")
    runs = frames.collect_runs(grid)
    return runs, frames.aggregate(runs, n_resamples=200)


def test_tuned_and_untuned_runs_are_separate_rows_never_seeds_of_one(tmp_path):
    runs, frame = write_tuned_and_untuned(tmp_path)
    lora = frame[frame["method"] == "lora"]
    assert len(lora) == 2  # was one row "tuned lr=0.0003, 3 seeds" over 6 runs
    untuned = lora[lora["tuned"].isna()].iloc[0]
    tuned = lora[lora["tuned"].notna()].iloc[0]
    assert untuned["seeds"] == 3 and len(untuned["run_ids"]) == 3 and "tuned" not in untuned["variant"]
    assert tuned["seeds"] == 3 and tuned["variant"] == "tuned lr=0.0003"
    assert untuned["primary_std"] == pytest.approx(np.std(UNTUNED, ddof=1))  # was the 6 runs' std
    sem = scipy_stats.sem(UNTUNED)
    assert untuned["ci_seeds"] == pytest.approx(scipy_stats.t.interval(0.95, 2, loc=np.mean(UNTUNED), scale=sem))
    cmps = compare.compare_task(frame, {r.run_id: r for r in runs}, n_resamples=200)
    (vs_full,) = [c for c in cmps if c["row"] == untuned.name and c["ref"] == frame.index[frame["method"] == "full"][0]]
    assert vs_full["p_seeds_raw"] == pytest.approx(scipy_stats.ttest_ind(UNTUNED, FULL, equal_var=False).pvalue)


def test_a_row_counts_its_runs_and_flags_a_seed_that_ran_twice(tmp_path):
    for i, seed in enumerate((0, 0, 1)):  # the same config and seed in two folders (copied in by hand)
        write_run(tmp_path, f"t.m.lora.copy{i}", base_config("t", "m", "lora", seed), summary_rows([0.4 + i / 10] * 5),
                  "summarization")
    row = frames.aggregate(frames.collect_runs(tmp_path), n_resamples=100).iloc[0]
    assert row["seeds"] == 3 and row["duplicate_seeds"] == [0]
    assert any("seed 0 ran more than once" in w for w in sections.warnings_for(frames.aggregate(
        frames.collect_runs(tmp_path), n_resamples=100)))


def write_two_test_sets(grid):
    """Two rows on different test sets sharing 100 ids: a scores high on its own 50, b low on its own 50."""
    a = [{"id": f"doc{i}", "scores": {k: (0.9 if i < 50 else 0.3 + 0.002 * (i % 7)) for k in ("rouge1",)}}
         for i in range(150)]
    b = [{"id": f"doc{i}", "scores": {k: (0.0 if i >= 150 else 0.6 + 0.002 * (i % 5)) for k in ("rouge1",)}}
         for i in range(50, 200)]
    for seed in range(3):
        write_run(grid, f"t.m.lora.seed{seed}", base_config("t", "m", "lora", seed), fill(a), "summarization")
        write_run(grid, f"t.m.full.seed{seed}", base_config("t", "m", "full", seed), fill(b), "summarization")
    runs = frames.collect_runs(grid)
    frame = frames.aggregate(runs, n_resamples=200)
    return frame, compare.compare_task(frame, {r.run_id: r for r in runs}, n_resamples=200)


def fill(rows):
    return [{"input": "x", "reference": "y", "prediction": "z", "scores": {k: r["scores"]["rouge1"] for k in
                                                                            ("rouge1", "rouge2", "rougeL", "rougeLsum")},
             "id": r["id"]} for r in rows]


def test_delta_comes_from_the_shared_test_ids_like_its_ci_and_p(tmp_path):
    frame, cmps = write_two_test_sets(tmp_path)
    (cmp,) = [c for c in cmps if "full" in c["against"]]
    shared = range(50, 150)
    by_hand = np.mean([0.3 + 0.002 * (i % 7) for i in shared]) - np.mean([0.6 + 0.002 * (i % 5) for i in shared])
    assert cmp["n_examples"] == 100 and cmp["ids_differ"]
    assert cmp["delta"] == pytest.approx(by_hand)  # was +0.10 from each row's own test set
    lo, hi = cmp["delta_ci"]
    assert lo <= cmp["delta"] <= hi and cmp["verdict"].startswith("worse")
    html, md = compare.comparison_table(frame, cmps)
    for text in (html, md):
        assert "different test examples" in text and "100 shared" in text


def test_one_nan_per_example_score_gives_no_p_value():
    a, b = np.array([0.1, 0.2, 0.3, np.nan, 0.5]), np.array([0.1, 0.1, 0.1, 0.1, 0.1])
    assert math.isnan(stats.paired_randomization_p(a, b, n_resamples=2000))  # exact branch: was 0.0
    a, b = np.linspace(0, 1, 40), np.zeros(40)
    a[7] = np.nan
    assert math.isnan(stats.paired_randomization_p(a, b, n_resamples=2000))  # Monte Carlo: was 0.0005
    counts = np.array([[1, 0, 0], [np.nan, 0, 1], [2, 1, 0]])
    assert math.isnan(stats.paired_randomization_p(counts, np.ones((3, 3))))
    cmp = {"n_examples": 40, "p_examples": math.nan, "p_seeds": 0.01, "delta": 0.3, "seeds": (3, 3)}
    assert "better" not in compare.describe_comparison(cmp)
    from medpeft.report.tables import format_points

    assert format_points(math.nan) == "n/a"  # a Δ over a NaN score (was "+nan")


def test_a_zero_difference_is_never_called_worse():
    cmp = {"n_examples": 50, "p_examples": 0.01, "p_seeds": 0.01, "delta": 0.0, "seeds": (3, 3)}
    assert "worse" not in compare.describe_comparison(cmp) and "better" not in compare.describe_comparison(cmp)


def test_two_seeds_have_measured_training_noise():
    cmp = {"n_examples": 50, "p_examples": 0.001, "p_seeds": 0.01, "delta": 0.05, "seeds": (2, 2), "seed_test": "Welch"}
    text = compare.describe_comparison(cmp)
    assert "unmeasured" not in text and "only 2 seeds" in text and "not yet a claim" in text
    one = compare.describe_comparison(dict(cmp, p_seeds=math.nan, seeds=(1, 3)))
    assert "training noise unmeasured" in one


def test_holm_by_hand():
    # p sorted 0.01, 0.02, 0.03, 0.04 of m = 4: 4·0.01, 3·0.02, 2·0.03, 1·0.04, running max, capped at 1
    assert stats.holm([0.03, 0.01, 0.04, 0.02]) == pytest.approx([0.06, 0.04, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 2·0.5, then never below the step before
    adjusted = stats.holm([0.01, math.nan, 0.02])  # an untestable comparison is no hypothesis: m = 2
    assert adjusted[0] == pytest.approx(0.02) and math.isnan(adjusted[1]) and adjusted[2] == pytest.approx(0.02)
    assert stats.holm([]) == []


def test_a_tasks_comparisons_are_holm_adjusted_once_per_pair_of_rows(tmp_path):
    rng = np.random.default_rng(0)
    for method, level in (("full", 0.5), ("lora", 0.6), ("ia3", 0.55)):  # lora is the best row
        for seed in range(3):
            scores = list(np.clip(level + 0.01 * seed + 0.1 * rng.standard_normal(30), 0, 1))
            write_run(tmp_path, f"t.m.{method}.seed{seed}", base_config("t", "m", method, seed), summary_rows(scores),
                      "summarization")
    runs = frames.collect_runs(tmp_path)
    frame = frames.aggregate(runs, n_resamples=200)
    by_id = {r.run_id: r for r in runs}
    adjusted = compare.compare_task(frame, by_id, n_resamples=200)
    raw = compare.compare_task(frame, by_id, n_resamples=200, adjust=False)
    pairs = {frozenset((c["row"], c["ref"])): c for c in raw}  # full vs best and best vs full: one hypothesis
    assert len(raw) == 4 and len(pairs) == 3  # lora vs full and full vs lora (the best) are one hypothesis
    for key in ("p_examples", "p_seeds"):
        expected = dict(zip(pairs, stats.holm([c[key] for c in pairs.values()])))
        assert [c[key] for c in adjusted] == pytest.approx([expected[frozenset((c["row"], c["ref"]))] for c in adjusted])
        assert [c[key] for c in raw] == [c[f"{key}_raw"] for c in raw]
    _, md = compare.comparison_table(frame, adjusted)
    assert f"Holm-adjusted over this task's {len(pairs)} comparisons" in md
    _, md = compare.comparison_table(frame, raw)
    assert "not adjusted for multiple comparisons" in md


def test_the_report_states_the_adjustment(tmp_path):
    from medpeft.report.build import build_report

    write_tuned_and_untuned(tmp_path)
    header = {True: "Holm-adjusted over each task's comparisons", False: "(not adjusted for multiple comparisons"}
    note = {True: "Both p-values are Holm-adjusted", False: "p-values are not adjusted for multiple comparisons"}
    for adjust in (True, False):
        paths = build_report(tmp_path, n_resamples=50, adjust=adjust)
        for text in (paths["html"].read_text(), paths["md"].read_text()):
            assert header[adjust] in text and note[adjust] in text and note[not adjust] not in text
