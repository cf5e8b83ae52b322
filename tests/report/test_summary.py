"""summary.csv and summary.md from a frame: text that a spreadsheet or a Markdown viewer would run is shown, not run."""
from __future__ import annotations

import csv
import io
import json

from report_fixtures import base_config, class_rows, write_run

from medpeft.report.frame import aggregate
from medpeft.report.summary import spreadsheet_safe, summary_csv, summary_markdown
from medpeft.run.record import load_results


def hostile_grid(grid_dir):
    """One classification run whose task, model and labels are text a user typed, and a negative cost."""
    cfg = base_config("=1+1", "@SUM(A1)", "lora", 0)
    write_run(grid_dir, "r", cfg, class_rows([1, 0, 1]), "classification")
    path = grid_dir / "r" / "result.json"
    data = json.loads(path.read_text())
    data["efficiency"]["forgetting"] = -0.25  # a negative number: the method improved language modelling
    path.write_text(json.dumps(data))
    return aggregate(load_results(grid_dir), n_resamples=50)


def test_summary_csv_cells_that_start_a_formula_are_quoted_but_numbers_are_not(tmp_path):
    frame = hostile_grid(tmp_path / "g")
    (row,) = list(csv.DictReader(io.StringIO(summary_csv(frame))))
    assert row["task"] == "'=1+1" and row["model"] == "'@SUM(A1)"  # shown as text, never evaluated
    assert row["forgetting_mean"] == "-0.25" and row["method"] == "lora"  # a number stays a number


def test_spreadsheet_safe_follows_the_owasp_rule():
    for text in ("=cmd|' /C calc'!A0", "+1+1", "-1+1", "@SUM(A1)", "\tx", "\rx", "-x"):
        assert spreadsheet_safe(text) == "'" + text
    for value in ("-1", "-0.5", "+2e-3", -3, -0.5, 2.0, "lora", "r=4, lr=-1", "", None):
        assert spreadsheet_safe(value) == value  # plain numbers, even written as text, and ordinary text


def test_summary_markdown_shows_html_in_names_as_text(tmp_path):
    cfg = base_config("<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "lora", 0)
    write_run(tmp_path / "g", "r", cfg, class_rows([1, 0, 1]), "classification")
    text = summary_markdown(aggregate(load_results(tmp_path / "g"), n_resamples=50))
    assert "<script>" not in text and "<img" not in text
    assert "&lt;script>alert(1)&lt;/script>" in text and "&lt;img src=x onerror=alert(1)>" in text
