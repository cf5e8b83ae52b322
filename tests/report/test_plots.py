"""The figures: error bars of an interval wholly on one side of its point estimate; one line per row setting."""
from __future__ import annotations

import pandas as pd
import pytest
from report_fixtures import base_config, summary_rows, write_run

from medpeft.report import frame as frames
from medpeft.report import plots
from medpeft.report.plots import bar_lengths, y_error


def test_a_ci_wholly_below_the_point_estimate_draws_no_negative_bar():
    """A percentile bootstrap CI of F1 over two test examples can be [0, 0] under a score of 0.5;
    matplotlib refuses a negative bar ('yerr' must not contain negative values) and the report was lost."""
    row = pd.Series({"primary_mean": 0.5, "primary_std": float("nan"), "ci_examples": (0.0, 0.0)})
    assert y_error(row) == (50.0, 0.0, True)
    assert bar_lengths(50.0, 60.0, 70.0) == (0.0, 20.0)
    assert bar_lengths(50.0, 40.0, 55.0) == (10.0, 5.0)


def write_size_by_rank(grid):
    """LoRA × train_size {100, 1000} × r {4, 16}, two seeds each (the issue's grid)."""
    for size in (100, 1000):
        for r in (4, 16):
            for seed in (0, 1):
                cfg = base_config("t", "m", "lora", seed, data__train_size=size, method_args__r=r)
                write_run(grid, f"t.m.lora.n{size}.r{r}.s{seed}", cfg, summary_rows([0.3 + r / 100 + size / 1e4] * 4),
                          "summarization")
    return frames.aggregate(frames.collect_runs(grid), n_resamples=50)


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plot functions save, kept instead of written."""
    figures = []
    monkeypatch.setattr(plots, "save_figure", lambda fig, path: figures.append(fig) or path)
    return figures


def legend_labels(fig) -> list[str]:
    return [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_a_sensitivity_plot_draws_one_line_per_other_setting(tmp_path, drawn):
    """Grouped by (method, model) only, r=4 and r=16 of both train sizes were one zig-zag line."""
    frame = write_size_by_rank(tmp_path)
    plots.plot_sensitivity(frame, "method_args.r", tmp_path / "s.png", "ROUGE-1")
    (fig,) = drawn
    assert sorted(legend_labels(fig)) == ["lora · m (train_size=100)", "lora · m (train_size=1000)"]
    for line in fig.axes[0].get_lines()[:2]:
        assert list(line.get_xdata()) == [4, 16]


def test_a_learning_curve_draws_one_line_per_other_setting(tmp_path, drawn):
    frame = write_size_by_rank(tmp_path)
    frame["train_examples"] = [v["data.train_size"] for v in frame["varying"]]
    plots.plot_learning_curve(frame, "data.train_size", tmp_path / "l.png", "ROUGE-1")
    (fig,) = drawn
    assert sorted(legend_labels(fig)) == ["lora · m (r=16)", "lora · m (r=4)"]
    ys = {label: list(line.get_ydata()) for label, line in zip(legend_labels(fig), fig.axes[0].get_lines())}
    assert ys["lora · m (r=4)"] == pytest.approx([34.0 + 1.0, 34.0 + 10.0])


def test_a_swept_log_axis_is_labelled_at_its_own_values(tmp_path, drawn):
    """A learning curve over 100 and 1000 examples (and a sweep of r over 4 and 16, too close for log)
    named its points by log ticks alone; a few swept values now label the axis themselves."""
    frame = write_size_by_rank(tmp_path)
    frame["train_examples"] = [v["data.train_size"] for v in frame["varying"]]
    plots.plot_learning_curve(frame, "data.train_size", tmp_path / "l.png", "ROUGE-1")
    (fig,) = drawn
    fig.canvas.draw()
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and list(ax.get_xticks()) == [100, 1000]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["100", "1000"]
