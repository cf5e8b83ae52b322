"""Seed statistics against hand-computed values: grouping, mean ± std, bootstrap CIs, paired tests."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from report_fixtures import base_config, class_rows, summary_rows, write_failed, write_run

from medpeft.report import compare, stats
from medpeft.report import frame as frames


def test_mean_and_std_over_seeds_are_the_papers_sample_std(tmp_path):
    for seed, score in enumerate([0.2, 0.3, 0.4]):
        write_run(tmp_path, f"t.m.lora.seed{seed}", base_config("t", "m", "lora", seed), summary_rows([score] * 4), "summarization")
    frame = frames.aggregate(frames.collect_runs(tmp_path), n_resamples=200)
    row = frame.iloc[0]
    assert row["seeds"] == 3
    assert row["rouge1_mean"] == pytest.approx(0.3)
    assert row["rouge1_std"] == pytest.approx(0.1)  # ddof=1: sqrt((0.01 + 0 + 0.01) / 2)
    assert row["train_seconds_mean"] == pytest.approx(5.0)
    # Student-t over the seeds: 0.3 ± 4.303 · 0.1/√3 (a bootstrap would have given only the range 0.2..0.4)
    assert row["ci_seeds"] == pytest.approx((0.3 - 0.24841, 0.3 + 0.24841), abs=1e-5)


def test_a_single_seed_has_no_std_and_no_seed_ci_but_a_test_set_ci(tmp_path):
    write_run(tmp_path, "t.m.lora.seed0", base_config("t", "m", "lora", 0), summary_rows([0.0, 1.0] * 10), "summarization")
    row = frames.aggregate(frames.collect_runs(tmp_path), n_resamples=500).iloc[0]
    assert math.isnan(row["rouge1_std"]) and math.isnan(row["ci_seeds"][0])
    assert row["n_examples"] == 20
    lo, hi = row["ci_examples"]
    assert 0.2 < lo < 0.5 < hi < 0.8


def test_failed_runs_are_not_aggregated_and_baselines_come_first(tmp_path):
    write_run(tmp_path, "t.m.lora.seed0", base_config("t", "m", "lora", 0), summary_rows([0.5]), "summarization")
    write_run(tmp_path, "t.m.untrained.seed0", base_config("t", "m", "untrained", 0), summary_rows([0.1]), "summarization")
    write_failed(tmp_path, "t.m.full.seed0", base_config("t", "m", "full", 0), "RuntimeError: boom")
    frame = frames.aggregate(frames.collect_runs(tmp_path), n_resamples=100)
    assert list(frame["method"]) == ["untrained", "lora"]
    assert list(frame["is_baseline"]) == [True, False]


def test_a_swept_setting_splits_rows_instead_of_pooling_as_seeds(tmp_path):
    for r in (4, 16):
        for seed in (0, 1):
            write_run(tmp_path, f"t.m.lora.r{r}.s{seed}", base_config("t", "m", "lora", seed, method_args__r=r),
                      summary_rows([r / 100]), "summarization")
    frame = frames.aggregate(frames.collect_runs(tmp_path), n_resamples=100)
    assert sorted(frame["variant"]) == ["r=16", "r=4"]
    assert list(frame["seeds"]) == [2, 2]
    assert sorted(frame["rouge1_mean"]) == pytest.approx([0.04, 0.16])
    assert frame["varying"].iloc[0] in ({"method_args.r": 4}, {"method_args.r": 16})


def test_a_block_without_an_axis_is_labelled_with_the_value_it_ran_at(tmp_path):
    """sentence-roles: one grid block sets data.train_size and train.epochs, the other leaves the base's;
    its row read "full (train_size=None, epochs=None)"."""
    for seed in (0, 1):
        base = base_config("t", "m", "full", seed)
        write_run(tmp_path, f"t.m.full.base.s{seed}", base, summary_rows([0.5]), "summarization")
        bigger = base_config("t", "m", "full", seed, data__train_size=80, train__epochs=3.0)
        run = write_run(tmp_path, f"t.m.full.big.s{seed}", bigger, summary_rows([0.6]), "summarization")
        path = tmp_path / run["run_id"] / "result.json"
        path.write_text(json.dumps(dict(run, variant={"data.train_size": 80, "train.epochs": 3.0})))
    frame = frames.aggregate(frames.collect_runs(tmp_path), n_resamples=100)
    assert sorted(frame["variant"]) == ["train_size=40, epochs=1", "train_size=80, epochs=3"]


def test_bootstrap_ci_by_hand():
    assert stats.bootstrap_ci([0.7, 0.7, 0.7]) == pytest.approx((0.7, 0.7))
    # resampled means of [0, 1] are 0, 0.5 or 1 with probabilities 1/4, 1/2, 1/4: the 2.5% and 97.5% quantiles are 0 and 1
    assert stats.bootstrap_ci([0.0, 1.0], n_resamples=4000) == pytest.approx((0.0, 1.0))
    assert all(math.isnan(x) for x in stats.bootstrap_ci([0.5]))
    values = np.random.default_rng(1).random(50)
    assert stats.bootstrap_ci(values, seed=3) == stats.bootstrap_ci(values, seed=3)  # fixed RNG: reproducible


def test_identical_methods_are_not_significantly_different():
    scores = [0.1, 0.5, 0.3, 0.9, 0.2, 0.4] * 5
    assert stats.paired_randomization_p(scores, scores, n_resamples=1000) == 1.0


def test_randomization_p_by_hand_exact_enumeration():
    # differences (1, 1, 1): of the 8 sign patterns only +++ and --- reach |mean| = 1, so p = 2/8
    assert stats.paired_randomization_p([1, 1, 1], [0, 0, 0], n_resamples=100) == pytest.approx(0.25)
    # differences (1, -1): the observed mean is 0, which every sign pattern reaches, so p = 1
    assert stats.paired_randomization_p([1, 0], [0, 1], n_resamples=100) == pytest.approx(1.0)
    assert stats.paired_randomization_p([1] * 10, [0] * 10, n_resamples=2000) == pytest.approx(2 / 1024)


def test_clearly_different_methods_have_a_small_p():
    rng = np.random.default_rng(0)
    base = rng.random(200)
    p = stats.paired_randomization_p(base + 0.2, base + rng.normal(0, 0.05, 200), n_resamples=999)
    assert p == pytest.approx(1 / 1000)  # Monte Carlo with the +1 correction: never exactly 0


def test_welch_p_by_hand():
    # means 2 and 5, variances 1 and 1, n = 3: t = -3 / sqrt(2/3) = -3.674, df = 4, two-sided p = 0.0213
    assert stats.welch_p([1, 2, 3], [4, 5, 6]) == pytest.approx(0.02131, abs=2e-4)
    assert math.isnan(stats.welch_p([1], [2, 3]))
    assert stats.welch_p([0.3, 0.3], [0.3, 0.3]) == 1.0


def test_pareto_front():
    # (cost, score): (2, 3) dominates (3, 2); (1, 1) is cheapest; (4, 4) is best
    assert stats.pareto_front([1, 2, 3, 4], [1, 3, 2, 4]) == [0, 1, 3]
    assert stats.pareto_front([1, 1], [2, 2]) == [0, 1]  # ties dominate nothing


def write_pair(tmp_path, a: list[int], b: list[int], seeds: int):
    for seed in range(seeds):
        write_run(tmp_path, f"t.m.full.s{seed}", base_config("t", "m", "full", seed), class_rows(a), "classification")
        write_run(tmp_path, f"t.m.lora.s{seed}", base_config("t", "m", "lora", seed), class_rows(b), "classification")
    runs = frames.collect_runs(tmp_path)
    frame = frames.aggregate(runs, n_resamples=500)
    return compare.compare_task(frame, {r.run_id: r for r in runs}, n_resamples=500)


def test_compare_identical_methods_reports_no_difference(tmp_path):
    (cmp,) = write_pair(tmp_path, [1, 0, 1, 1] * 10, [1, 0, 1, 1] * 10, seeds=3)
    assert cmp["p_examples"] == 1.0 and cmp["delta"] == 0.0
    assert cmp["p_seeds"] == 1.0
    assert cmp["verdict"] == "no detectable difference"


def test_compare_clearly_different_methods(tmp_path):
    by_kind = {c["against"]: c for c in write_pair(tmp_path, [0] * 40, [1] * 36 + [0] * 4, seeds=3)}
    lora_vs_full, full_vs_best = by_kind["full"], by_kind["best"]  # lora is the best row
    assert lora_vs_full["delta"] == pytest.approx(0.9) and full_vs_best["delta"] == pytest.approx(-0.9)
    assert lora_vs_full["n_examples"] == 40 and lora_vs_full["p_examples"] < 0.01
    assert math.isnan(lora_vs_full["p_seeds"])  # no spread over seeds at all: untestable (it was p = 0)
    assert lora_vs_full["verdict"].startswith("better (seed scores do not vary")
    assert full_vs_best["verdict"].startswith("worse (seed scores do not vary")


def test_each_method_on_a_pretrained_model_is_compared_with_its_base(tmp_path):
    """Domain pre-training asks: does the same method do better on the adapted model than on its base?
    A model folder that `medpeft pretrain` made names its base (pretrain.json); other models do not."""
    import json

    adapted = tmp_path / "models" / "adapted"
    adapted.mkdir(parents=True)
    (adapted / "pretrain.json").write_text(json.dumps({"base_model": "base"}))
    # (model, method): correct answers, settings; full is tuned (each model at its own chosen lr: still the
    # same setting), ia3 ran at different fixed lrs (not the same setting: no comparison)
    tuned = {"tuning": {"role": "final", "chosen": {"train.lr": 1e-4}}}
    cases = {("base", "full"): ([1] * 20 + [0] * 20, tuned), ("base", "lora"): ([1] * 24 + [0] * 16, {}),
             ("base", "ia3"): ([1] * 20 + [0] * 20, {}),
             ("adapted", "full"): ([1] * 30 + [0] * 10, {"tuning": {"role": "final", "chosen": {"train.lr": 3e-4}},
                                                         "train": {"lr": 3e-4, "epochs": 1.0}}),
             ("adapted", "lora"): ([1] * 24 + [0] * 16, {}), ("adapted", "ia3"): ([1] * 26 + [0] * 14,
                                                                                  {"train": {"lr": 5e-3, "epochs": 1.0}}),
             ("other", "lora"): ([1] * 10 + [0] * 30, {})}
    grid = tmp_path / "grid"
    for (model, method), (rows, extra) in cases.items():
        for seed in range(3):
            result = write_run(grid, f"t.{model}.{method}.s{seed}", dict(base_config("t", model, method, seed), **extra),
                               class_rows(rows), "classification")
            result["model_path"] = str(adapted) if model == "adapted" else f"/nowhere/{model}"
            if model == "adapted":  # a local folder's content fingerprint names the model, not a setting
                result["config"]["fingerprint"] = {"model": "4aeabaf18e05a291"}
            (grid / result["run_id"] / "result.json").write_text(json.dumps(result))
    runs = frames.collect_runs(grid)
    frame = frames.aggregate(runs, n_resamples=200)
    comparisons = compare.compare_task(frame, {r.run_id: r for r in runs}, n_resamples=200)
    names = {idx: (row["model"], row["method"]) for idx, row in frame.iterrows()}
    on_base = {names[c["row"]]: (names[c["ref"]], round(c["delta"], 3)) for c in comparisons if "base model" in c["against"]}
    assert on_base == {("adapted", "full"): (("base", "full"), 0.25), ("adapted", "lora"): (("base", "lora"), 0.0)}
    html_table, md = compare.comparison_table(frame, comparisons)
    assert "| full (tuned lr=0.0003) · adapted | full (tuned lr=0.0001) · base | +25.00 |" in md
    from medpeft.report.sections import answer_first

    (line,) = [x for x in answer_first(frame, comparisons, 1.0) if "against its base" in x]
    assert line.startswith("**adapted against its base base**, each method at the same settings: ")
    assert "full (tuned lr=0.0003) +25.00 (" in line and "lora +0.00 (no detectable difference)" in line


def test_one_seed_is_never_called_a_claim(tmp_path):
    cmp = {c["against"]: c for c in write_pair(tmp_path, [0] * 40, [1] * 40, seeds=1)}["full"]
    assert cmp["p_examples"] < 0.01 and math.isnan(cmp["p_seeds"])
    assert "not yet a claim" in cmp["verdict"] and "1 seed" in cmp["verdict"]


def test_test_set_and_seeds_must_agree_before_a_claim():
    cmp = {"n_examples": 50, "p_examples": 0.001, "p_seeds": 0.3, "delta": 0.02, "seeds": (3, 3)}
    assert "within seed noise" in compare.describe_comparison(cmp)
    assert compare.describe_comparison(dict(cmp, p_seeds=0.01)) == "better"
    assert compare.describe_comparison(dict(cmp, p_examples=0.2)) == "no detectable difference"


def test_a_verdicts_seed_p_says_it_is_holm_adjusted_and_reads_as_the_tables():
    """The verdict quoted the adjusted seed p as plain "Welch p = 0.07" (raw 0.022): a reader took a p below
    0.05 for noise without knowing why; it now says it is adjusted, with the table's three decimals."""
    cmp = {"n_examples": 400, "p_examples": 0.012, "p_seeds": 0.0657, "p_seeds_raw": 0.0219, "delta": -0.05,
           "seeds": (3, 3), "seed_test": "Welch", "adjusted": True}
    assert compare.describe_comparison(cmp) == ("worse on this test set, but within seed noise "
                                                "(Holm-adjusted Welch p = 0.066): not a claim")
    unadjusted = dict(cmp, p_seeds=0.0657, p_seeds_raw=0.0657, adjusted=False)
    assert "(Welch p = 0.066)" in compare.describe_comparison(unadjusted)


def test_constant_seeds_are_described_by_the_seed_test_used():
    cmp = {"n_examples": 50, "p_examples": 0.001, "p_seeds": math.nan, "delta": 0.02}
    welch = compare.describe_comparison(dict(cmp, seeds=(3, 3), seed_test="Welch"))
    baseline = compare.describe_comparison(dict(cmp, seeds=(3,), seed_test="one-sample t"))
    assert welch == "better (seed scores do not vary within either row: no seed-level test)"
    assert baseline == "better (seed scores do not vary: no seed-level test)"  # a baseline has no seeds of its own


def test_points_are_signed_and_float_noise_is_not_negative():
    from medpeft.report.tables import format_points

    assert [format_points(d) for d in (0.0123, -0.0123, -1e-17, 0.5 - (0.1 + 0.2 + 0.2))] == ["+1.23", "-1.23", "+0.00", "+0.00"]


def test_row_labels_use_short_names_unless_ambiguous():
    assert frames.short_names(["method_args.r", "train.lr"]) == {"method_args.r": "r", "train.lr": "lr"}
    assert frames.short_names(["a.lr", "b.lr"]) == {"a.lr": "a.lr", "b.lr": "b.lr"}


def test_seed_ci_is_the_student_t_interval():
    from scipy import stats as scipy_stats

    lo, hi = stats.t_interval([0.5, 0.6, 0.7])
    assert (lo, hi) == pytest.approx((0.35159, 0.84841), abs=1e-5)  # mean 0.6 ± 4.303 · 0.1/√3
    assert (lo, hi) == pytest.approx(scipy_stats.t.interval(0.95, 2, loc=0.6, scale=scipy_stats.sem([0.5, 0.6, 0.7])))
    assert all(math.isnan(x) for x in stats.t_interval([0.5]))


def test_seed_ci_covers_the_mean_95_percent_of_the_time():
    rng = np.random.default_rng(0)
    hits = [lo <= 0.0 <= hi for lo, hi in (stats.t_interval(rng.normal(0, 1, 3)) for _ in range(4000))]
    assert 0.94 < np.mean(hits) < 0.96  # the percentile bootstrap over 3 values covered ~0.74


def test_the_report_row_uses_the_t_interval_over_seeds(tmp_path):
    for seed, level in enumerate((0.5, 0.6, 0.7)):
        write_run(tmp_path, f"t.m.lora.seed{seed}", base_config("t", "m", "lora", seed), summary_rows([level] * 4), "summarization")
    row = frames.aggregate(frames.collect_runs(tmp_path), n_resamples=100).iloc[0]
    assert row["ci_seeds"] == pytest.approx(stats.t_interval([0.5, 0.6, 0.7]))


def test_welch_on_two_constant_groups_is_untestable_not_significant():
    assert math.isnan(stats.welch_p([0.5, 0.5, 0.5], [0.7, 0.7, 0.7]))  # was p = 0: a "real" difference from nothing
    assert stats.welch_p([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]) == 1.0
    assert stats.welch_p([0.5, 0.5, 0.5], [0.6, 0.7, 0.8]) < 0.1  # one group's spread is enough to test


def test_the_answer_warns_when_the_untrained_baseline_beats_every_trained_row(tmp_path):
    from medpeft.report.compare import compare_task
    from medpeft.report.sections import answer_first

    write_run(tmp_path, "t.m.untrained.seed0", base_config("t", "m", "untrained", 0), summary_rows([0.5] * 10), "summarization")
    write_run(tmp_path, "t.m.lora.seed0", base_config("t", "m", "lora", 0), summary_rows([0.3] * 10), "summarization")
    runs = frames.collect_runs(tmp_path)
    frame = frames.aggregate(runs, n_resamples=100)
    lines = answer_first(frame, compare_task(frame, {r.run_id: r for r in runs}, n_resamples=100), 1.0)
    assert any("untrained m (50.00) scores at least as high as every trained row" in line for line in lines)
    # another model's trained row scores higher: the sentence speaks of m's rows only (it said "every trained row")
    write_run(tmp_path, "t.m2.lora.seed0", base_config("t", "m2", "lora", 0), summary_rows([0.9] * 10), "summarization")
    runs = frames.collect_runs(tmp_path)
    frame = frames.aggregate(runs, n_resamples=100)
    lines = answer_first(frame, compare_task(frame, {r.run_id: r for r in runs}, n_resamples=100), 1.0)
    assert any("untrained m (50.00) scores at least as high as every trained m row" in line for line in lines)


def test_the_answer_never_calls_a_dearer_tied_row_the_cheapest(tmp_path):
    """A row within noise of the best but with more trainable parameters than the best is not "cheapest
    not significantly worse" (the prompt-length sweep's report named 20 tokens beside a best of 5); a
    cheaper tied row still is."""
    from medpeft.report.compare import compare_task
    from medpeft.report.sections import answer_first

    scores = [0.2, 0.8, 0.5, 0.4, 0.6, 0.3, 0.7, 0.5, 0.45, 0.55]
    better = [0.25] + scores[1:]  # higher on one example only: no detectable difference

    def answer(best_method: str, other: str) -> list[str]:
        grid = tmp_path / best_method
        for seed in range(3):
            write_run(grid, f"t.m.{best_method}.seed{seed}", base_config("t", "m", best_method, seed), summary_rows(better), "summarization")
            write_run(grid, f"t.m.{other}.seed{seed}", base_config("t", "m", other, seed), summary_rows(scores), "summarization")
        runs = frames.collect_runs(grid)
        frame = frames.aggregate(runs, n_resamples=200)
        comparisons = compare_task(frame, {r.run_id: r for r in runs}, n_resamples=200)
        assert [c["p_examples"] >= 0.05 for c in comparisons] == [True]
        return answer_first(frame, comparisons, 0.1)

    lines = answer("ia3", "lora")  # the best (ia3: 0.1 % trainable) is cheaper than the tied lora (1 %)
    assert lines[0].startswith("**Best") and "ia3" in lines[0]
    assert not any("Cheapest not significantly worse" in line for line in lines)
    lines = answer("lora", "ia3")  # the tied row is the cheaper one: named
    assert any("Cheapest not significantly worse" in line and "ia3" in line for line in lines)


def test_a_cheap_row_no_better_than_the_untrained_baseline_is_not_recommended(tmp_path):
    """Tied with the best is not enough when the best itself is no better than the majority class (the
    drug-review grid named prompt tuning "cheapest not significantly worse" while it sat at the majority)."""
    from medpeft.report.compare import compare_task
    from medpeft.report.sections import answer_first

    scores = [0.2, 0.8, 0.5, 0.4, 0.6, 0.3, 0.7, 0.5, 0.45, 0.55]

    def cheap_line(baseline: list[float]) -> str:
        grid = tmp_path / str(baseline[0])
        write_run(grid, "t.m.untrained.seed0", base_config("t", "m", "untrained", 0), summary_rows(baseline), "summarization")
        for seed in range(3):
            write_run(grid, f"t.m.lora.seed{seed}", base_config("t", "m", "lora", seed), summary_rows([0.25] + scores[1:]), "summarization")
            write_run(grid, f"t.m.ia3.seed{seed}", base_config("t", "m", "ia3", seed), summary_rows(scores), "summarization")
        runs = frames.collect_runs(grid)
        frame = frames.aggregate(runs, n_resamples=200)
        # 2**10 sign patterns fit in 2000 resamples: the exact test (200 Monte Carlo draws of seed 0 happen to hit the
        # all-same-sign pattern 4 times, p = 0.025, which Holm over 2 comparisons no longer calls real)
        (line,) = [x for x in answer_first(frame, compare_task(frame, {r.run_id: r for r in runs}, n_resamples=2000), 0.1)
                   if x.startswith("Cheapest not significantly worse")]
        return line

    at_majority = cheap_line(scores)  # ia3 scores exactly what the untrained model does
    assert "**ia3**" in at_majority
    assert at_majority.endswith("; but not detectably better than the untrained baseline either "
                                "(+0.00 points, p = 1.000): no recommendation.")  # float noise: -1e-17 is +0.00
    assert "untrained" not in cheap_line([0.0] * 10)  # far above the baseline: named without a caveat


def test_one_sample_p_by_hand():
    """Student t with 2 degrees of freedom has a closed form: p = 1 - |t| / sqrt(2 + t^2)."""
    t = 2 / (1 / math.sqrt(3))  # [1, 2, 3] against 0: mean 2, s 1, n 3
    assert stats.one_sample_p([1, 2, 3], 0.0) == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-9)
    assert stats.one_sample_p([0.4, 0.4, 0.4], 0.4) == 1.0
    assert math.isnan(stats.one_sample_p([0.4, 0.4, 0.4], 0.3))  # no spread, other value: untestable, never 0
    assert math.isnan(stats.one_sample_p([0.4], 0.3))


def test_each_trained_row_is_compared_with_its_untrained_baseline(tmp_path):
    """Does training pay at all? The baseline (zero-shot or the majority class) is one deterministic run: the
    seeds are tested against its score (one-sample t), and one seed against it is not yet a claim."""
    from medpeft.report.compare import comparison_table
    from medpeft.report.sections import answer_first

    write_run(tmp_path, "t.m.untrained.seed0", base_config("t", "m", "untrained", 0), summary_rows([0.3] * 10), "summarization")
    for seed in range(3):  # seed scores 0.50, 0.51, 0.52: +21 points on every example
        write_run(tmp_path, f"t.m.lora.seed{seed}", base_config("t", "m", "lora", seed),
                  summary_rows([0.5 + 0.01 * seed] * 10), "summarization")
    write_run(tmp_path, "t.m.ia3.seed0", base_config("t", "m", "ia3", 0), summary_rows([0.3] * 10), "summarization")
    runs = frames.collect_runs(tmp_path)
    frame = frames.aggregate(runs, n_resamples=200)
    comparisons = compare.compare_task(frame, {r.run_id: r for r in runs}, n_resamples=2000)
    vs = {frame.loc[c["row"], "method"]: c for c in comparisons if c["against"] == "untrained"}
    assert set(vs) == {"lora", "ia3"} and all(frame.loc[c["ref"], "method"] == "untrained" for c in vs.values())
    lora, ia3 = vs["lora"], vs["ia3"]
    t = 0.21 / (0.01 / math.sqrt(3))
    assert lora["delta"] == pytest.approx(0.21) and lora["seeds"] == (3,) and lora["seed_test"] == "one-sample t"
    assert lora["p_examples_raw"] == pytest.approx(2 / 1024)  # exact: only the all-plus and all-minus sign patterns
    assert lora["p_examples"] == pytest.approx(3 * 2 / 1024)  # Holm: the smallest of 3 (lora-ia3, both vs untrained)
    assert lora["p_seeds_raw"] == pytest.approx(1 - t / math.sqrt(2 + t * t), rel=1e-6)
    assert lora["verdict"] == "better"
    assert ia3["delta"] == 0.0 and ia3["p_examples"] == 1.0 and ia3["verdict"] == "no detectable difference (only 1 seed)"
    (line,) = [x for x in answer_first(frame, comparisons, 1.0) if x.startswith("Untrained baseline")]
    assert line == ("Untrained baseline: 30.00. Against it, the best row: +21.00 points, p = 0.006: better. "
                    "1 of 2 trained rows detectably better than it (1 with fewer than 3 seeds not judged).")
    _, md = comparison_table(frame, comparisons)
    assert "| lora | untrained | +21.00 |" in md and "one-sample t-test" in md


def test_each_row_meets_its_own_models_baseline(tmp_path):
    """Two models, two baselines: a row is compared with its model's, never the other's, and the answer
    says whose baseline it means."""
    from medpeft.report.sections import answer_first

    for model, base in (("small", 0.3), ("big", 0.6)):
        write_run(tmp_path, f"t.{model}.untrained.seed0", base_config("t", model, "untrained", 0),
                  summary_rows([base] * 10), "summarization")
        for seed in range(3):  # 0.50-0.52 on both: above small's baseline, below big's
            write_run(tmp_path, f"t.{model}.lora.seed{seed}", base_config("t", model, "lora", seed),
                      summary_rows([0.5 + 0.01 * seed + (0.001 if model == "big" else 0)] * 10), "summarization")
    runs = frames.collect_runs(tmp_path)
    frame = frames.aggregate(runs, n_resamples=200)
    comparisons = compare.compare_task(frame, {r.run_id: r for r in runs}, n_resamples=2000)
    vs = {frame.loc[c["row"], "model"]: (frame.loc[c["ref"], "model"], round(c["delta"], 3), c["verdict"])
          for c in comparisons if c["against"] == "untrained"}
    assert vs == {"small": ("small", 0.21, "better"), "big": ("big", -0.089, "worse")}
    (line,) = [x for x in answer_first(frame, comparisons, 1.0) if x.startswith("Untrained baseline")]
    assert line == ("Untrained baseline: big 60.00; small 30.00. Against big's, the best row: -8.90 points, "
                    "p = 0.006: worse. 1 of 2 trained rows detectably better than their model's.")


def test_the_best_parameter_efficient_row_names_the_rows_close_behind_it(tmp_path):
    """The demo named IA3 the best parameter-efficient method on a 0.58-point lead over LoRA that no test
    compares: the line now says which rows are within --within points of it, and that nothing tested them."""
    from medpeft.report.compare import compare_task
    from medpeft.report.sections import answer_first

    levels = {"full": 0.9, "ia3": 0.7, "lora": 0.695, "prompt_tuning": 0.5}
    for method, level in levels.items():
        for seed in range(3):
            write_run(tmp_path, f"t.m.{method}.seed{seed}", base_config("t", "m", method, seed),
                      summary_rows([level + 0.01 * seed] * 10), "summarization")
    runs = frames.collect_runs(tmp_path)
    frame = frames.aggregate(runs, n_resamples=100)
    comparisons = compare_task(frame, {r.run_id: r for r in runs}, n_resamples=100)
    (line,) = [x for x in answer_first(frame, comparisons, 1.0) if x.startswith("**Best parameter-efficient")]
    assert "ia3" in line.split("**")[1]
    assert line.endswith(" Within 1 point of it: lora, 70.50 ± 1.00 (3 seeds), not compared with it by any test here.")
    (line,) = [x for x in answer_first(frame, comparisons, 0.1) if x.startswith("**Best parameter-efficient")]
    assert "Within" not in line  # 0.5 points behind: not within 0.1
