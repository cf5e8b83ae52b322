"""One cost table (report/tables.COSTS) for every cost a run records (run/record.COST_KEYS), one score format."""
from __future__ import annotations

import math

from medpeft.report.tables import COSTS, format_cost, format_score
from medpeft.run.record import COST_KEYS


def test_the_cost_table_names_every_recorded_cost_in_the_records_order():
    assert tuple(COSTS) == COST_KEYS


def test_costs_print_as_the_report_shows_them():
    assert format_cost("trainable_pct", 0.6531) == "0.653% trainable"
    assert format_cost("peak_memory_bytes", 1.5 * 2**30) == "1.5 GiB peak"
    assert format_cost("adapter_bytes", 601_088) == "587.0 KiB on disk"
    assert COSTS["train_seconds"].format(7200) == "2.0 h" and COSTS["trainable_params"].format(149_381) == "149.4K"
    assert not COSTS["train_tokens_per_second"].lower_is_better and COSTS["forgetting"].format(0.01) == "+0.010"


def test_one_score_format():
    assert format_score(0.50004, 0.0156) == "50.00 ± 1.56" and format_score(0.5) == "50.00"
    assert format_score(None, missing="n/a") == "n/a" and format_score(math.nan) == ""


def memory_grid(tmp_path, left: int):
    """lora (0.5 GiB peak) and ia3 (0.6 GiB) at three seeds, equal scores, run in one process that held `left`
    bytes of earlier runs' memory at each run's start (CPU)."""
    import json

    from report_fixtures import base_config, summary_rows, write_run

    from medpeft.report import frame as frames

    write_run(tmp_path, "t.m.untrained.seed0", base_config("t", "m", "untrained", 0), summary_rows([0.3] * 10), "summarization")
    for method, peak in (("lora", 2**29), ("ia3", 2**29 + 2**26)):
        for seed in range(3):
            result = write_run(tmp_path, f"t.m.{method}.seed{seed}", base_config("t", "m", method, seed),
                               summary_rows([0.5] * 10), "summarization")
            result["efficiency"].update(peak_memory_bytes=peak, earlier_runs_resident_bytes=left)
            (tmp_path / f"t.m.{method}.seed{seed}" / "result.json").write_text(json.dumps(result))
    return frames.aggregate(frames.collect_runs(tmp_path), n_resamples=200)


def test_peak_memory_is_not_ranked_when_earlier_runs_of_the_process_held_much_memory(tmp_path):
    """On CPU the runs of a grid share one process, and what earlier runs left resident moved each run's peak
    by up to 0.5 GiB: the demo bolded full fine-tuning as the least memory because it ran first."""
    from medpeft.report.build import memory_note
    from medpeft.report.sections import cheapest_near_best
    from medpeft.report.tables import table_columns

    def peak_column(frame):
        return next(c for c in table_columns(frame) if c["header"] == "Peak memory")

    (tmp_path / "alone").mkdir()
    alone = memory_grid(tmp_path / "alone", 0)
    assert peak_column(alone)["best"] and "not ranked" not in memory_note(alone)
    assert "so no peak includes theirs" in memory_note(alone)  # every run recorded 0 left by earlier runs
    trained = alone[~alone["is_baseline"]]
    assert "least peak memory" in cheapest_near_best(trained, int(trained["primary_mean"].idxmax()), 1.0, "ROUGE-1", False)
    (tmp_path / "shared").mkdir()
    shared = memory_grid(tmp_path / "shared", 2**29)
    assert not peak_column(shared)["best"]
    assert "held up to 512.0 MiB of earlier runs' memory" in memory_note(shared) and "not ranked" in memory_note(shared)
    assert "--backend processes" in memory_note(shared)  # the way to exact peaks, which the kill test in engines/ checks
    trained = shared[~shared["is_baseline"]]
    assert "least peak memory" not in cheapest_near_best(trained, int(trained["primary_mean"].idxmax()), 1.0, "ROUGE-1", False)


def test_the_memory_panel_draws_no_pareto_front_when_peaks_are_not_ranked(tmp_path, monkeypatch):
    import matplotlib.axes

    from medpeft.report.plots import plot_tradeoffs

    fronts = []
    plot = matplotlib.axes.Axes.plot

    def recorded(ax, *args, **kwargs):
        fronts.append(kwargs.get("label") == "Pareto front")
        return plot(ax, *args, **kwargs)

    monkeypatch.setattr(matplotlib.axes.Axes, "plot", recorded)
    for name, left, expected in (("alone", 0, 3), ("shared", 2**29, 2)):  # trainable %, memory, time; memory left out
        (tmp_path / name).mkdir()
        fronts.clear()
        plot_tradeoffs(memory_grid(tmp_path / name, left), tmp_path / f"{name}.png", "ROUGE-1")
        assert sum(fronts) == expected, name
