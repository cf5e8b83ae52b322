"""Error bars of the figures: an interval that lies wholly on one side of its point estimate."""
from __future__ import annotations

import pandas as pd

from medpeft.report.plots import bar_lengths, y_error


def test_a_ci_wholly_below_the_point_estimate_draws_no_negative_bar():
    """A percentile bootstrap CI of F1 over two test examples can be [0, 0] under a score of 0.5;
    matplotlib refuses a negative bar ('yerr' must not contain negative values) and the report was lost."""
    row = pd.Series({"primary_mean": 0.5, "primary_std": float("nan"), "ci_examples": (0.0, 0.0)})
    assert y_error(row) == (50.0, 0.0, True)
    assert bar_lengths(50.0, 60.0, 70.0) == (0.0, 20.0)
    assert bar_lengths(50.0, 40.0, 55.0) == (10.0, 5.0)
