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
