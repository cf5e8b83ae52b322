"""Real tiny grids, end to end, through every output a grid writes (summary.csv, summary.md, report.md,
report.html): each shows the task type's primary metric with the mean of the runs' own result.json
numbers, keeps a sweep's variants apart, and never pools runs left by an older config as seeds.

The expected values are computed here from the runs' result.json files, never from the report's
frame, so a wrong aggregation cannot check itself."""
from __future__ import annotations

import html
import json
import random
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from medpeft.config import expand_grid
from medpeft.grid import run_grid
from medpeft.run.metrics import METRICS, PRIMARY_METRIC

from conftest import TINY_DATA, TINY_TRAIN

# Full fine-tuning at a high learning rate for a few steps: enough for the tiny random models to score
# above zero, with different scores per seed, on NER, classification and summarization (the tiny T5
# needs more steps before a generated word matches), so matching numbers are evidence, not 0 == 0.
# Multi-label micro-F1 stays 0 at any tiny budget (no label reaches p >= 0.5); its checks still prove
# the column, label and rows are there.
TRAIN = {**TINY_TRAIN, "max_steps": 4, "lr": 1e-2}
DATA = {**TINY_DATA, "test_size": 8}
STEPS = {"summarization": 10}  # task type -> train.max_steps, where TRAIN's are too few
SETUPS = {  # task type -> (task, model); NER has no offline corpus: it reads a BIO file built here
    "summarization": ("pubmed-conclusion", "tiny-t5"),
    "classification": ("pubmed-rct", "tiny-bert"),
    "multilabel": ("mesh", "tiny-bert"),
    "ner": (None, "tiny-bert"),
}
TEXT_OUTPUTS = ("summary.md", "report.md", "report.html")
# Column headers of each text output's table: (method/label, seeds, primary metric given its label)
HEADERS = {"summary.md": ("method", "seeds", "{} (primary)"),
           "report.md": ("Method", "Seeds", "{}"),
           "report.html": ("Method", "Seeds", "{}")}
PNG = b"\x89PNG\r\n\x1a\n"

# --- building and running grids ---------------------------------------------------------------------

DRUGS = ["aspirin", "ibuprofen", "metformin", "insulin", "warfarin", "heparin"]
DISEASES = [["diabetes"], ["heart", "failure"], ["asthma"], ["chronic", "kidney", "disease"]]


def make_bio_sentence(rng: random.Random) -> dict:
    drug, disease = rng.choice(DRUGS), rng.choice(DISEASES)
    tokens = ["patient", "with"] + disease + ["was", "given", drug]
    tags = ["O", "O"] + ["B-DIS"] + ["I-DIS"] * (len(disease) - 1) + ["O", "O", "B-DRUG"]
    return {"tokens": tokens, "tags": tags}


def write_bio_file(folder: Path, sentences: int = 40) -> Path:
    """BIO-tagged sentences as JSONL ({tokens, tags}), as tests/run/test_kinds.py builds them."""
    rng = random.Random(0)
    path = folder / "ner-toy.jsonl"
    path.write_text("".join(json.dumps(make_bio_sentence(rng)) + "\n" for _ in range(sentences)))
    return path


def run_quiet_grid(spec: dict, runs_dir: Path, name: str, overrides=()) -> Path:
    """Expand and run a grid as `medpeft grid` does, without its log lines."""
    return run_grid(expand_grid(spec, name=name, overrides=overrides), runs_dir, log=lambda *a: None).grid_dir


# --- what the runs say (the expected values) --------------------------------------------------------


def read_results(grid_dir: Path) -> list[dict]:
    """Every result.json of a grid folder, as plain data."""
    return [json.loads(path.read_text()) for path in sorted(grid_dir.glob("*/result.json"))]


def label_run(result: dict) -> str:
    """The row label a run belongs under: its method, plus the grid axes it recorded (`lora (r=4)`)."""
    variant = ", ".join(f"{key.rsplit('.', 1)[-1]}={value}" for key, value in sorted(result["variant"].items()))
    return result["method"] + (f" ({variant})" if variant else "")


def group_runs(results: list[dict]) -> dict[str, list[dict]]:
    groups: dict[str, list[dict]] = {}
    for result in results:
        assert result["status"] == "ok", result.get("error")
        groups.setdefault(label_run(result), []).append(result)
    return groups


def mean_metric(runs: list[dict], key: str) -> float:
    return float(np.mean([r["metrics"][key] for r in runs]))


# --- what the outputs say ---------------------------------------------------------------------------


def read_summary_csv(grid_dir: Path) -> pd.DataFrame:
    """summary.csv with a `label` column as the other outputs print it (`lora (r=4)`)."""
    frame = pd.read_csv(grid_dir / "summary.csv", dtype={"variant": str, "varying": str}).fillna({"variant": ""})
    frame["label"] = [m + (f" ({v})" if v else "") for m, v in zip(frame["method"], frame["variant"])]
    return frame


def parse_markdown_table(text: str) -> list[dict[str, str]]:
    """The first pipe table in `text` as one {header: cell} per row, bold marks removed."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    block = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = re.split(r"(?<!\\)\|", line)[1:-1]  # an escaped \| is part of a cell
        block.append([cell.strip().strip("*").replace("\\|", "|") for cell in cells])
    header, body = block[0], block[2:]  # block[1] is the |---| rule
    return [dict(zip(header, cells)) for cells in body]


def parse_html_table(text: str) -> list[dict[str, str]]:
    """The first <table> in `text` as one {header: cell} per row."""
    table = text[text.index("<table"):text.index("</table>")]
    header = [html.unescape(h) for h in re.findall(r"<th>(.*?)</th>", table)]
    body = table[table.index("<tbody>"):]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body)
    return [dict(zip(header, (html.unescape(c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)))) for row in rows]


def read_main_table(grid_dir: Path, output: str, task: str) -> list[dict[str, str]]:
    """One task's table in summary.md, or its main table in report.md / report.html."""
    text = (grid_dir / output).read_text(encoding="utf-8")
    if output == "summary.md":
        return parse_markdown_table(text.split(f"\n### {task} (")[1].split("\n### ")[0])
    if output == "report.md":
        section = text.split(f"\n## {task} (")[1].split("\n## ")[0]
        return parse_markdown_table(section.split("### Main table")[1])
    section = text.split(f"<h2>{html.escape(task)} (")[1].split("</section>")[0]
    return parse_html_table(section[section.index("<table class='main'>"):])


def index_rows(rows: list[dict[str, str]], output: str) -> dict[str, dict[str, str]]:
    """Table rows by their method label; a label shown twice is an error."""
    method = HEADERS[output][0]
    labels = [row[method] for row in rows]
    assert len(labels) == len(set(labels)), f"{output}: a row label appears twice: {labels}"
    return dict(zip(labels, rows))


def parse_shown_number(cell: str) -> float:
    """`12.34 ± 1.50` -> 12.34 (metrics are printed ×100 with two decimals)."""
    return float(cell.split("±")[0])


def assert_shown(cell: str, value: float, where: str) -> None:
    """A printed metric cell matches `value` (a 0-1 score) to the two decimals it is printed with."""
    shown = parse_shown_number(cell)
    assert shown == pytest.approx(100 * value, abs=0.0051), f"{where}: shows {cell!r}, runs say {100 * value:.4f}"


# --- 1. the primary metric of every task type -------------------------------------------------------


@pytest.fixture(scope="module", params=sorted(SETUPS))
def task_grid(request, tmp_path_factory, assets_ready):
    """(task type, task name, grid dir) of a real grid per task type: full fine-tuning at seeds 0 and 1,
    plus the untrained baseline run_grid adds. Runs once per task type for the whole module."""
    task_type = request.param
    task, model = SETUPS[task_type]
    data = DATA
    if task is None:  # a file of 40 sentences: its own splits (32/4/4), which DATA's sizes would cut or exceed
        task = {"type": "ner", "path": str(write_bio_file(tmp_path_factory.mktemp("bio")))}
        data = {k: v for k, v in DATA.items() if not k.endswith("_size")}
    train = {**TRAIN, "max_steps": STEPS.get(task_type, TRAIN["max_steps"])}
    spec = {"base": {"task": task, "model": model, "method": "full", "data": data, "train": train},
            "grid": {"seed": [0, 1]}}
    grid_dir = run_quiet_grid(spec, tmp_path_factory.mktemp(task_type), name=f"outputs-{task_type}")
    results = read_results(grid_dir)
    assert {r["task_type"] for r in results} == {task_type}
    assert sorted(label_run(r) for r in results) == ["full", "full", "untrained"]
    return task_type, results[0]["task"], grid_dir


def test_summary_csv_primary_metric_is_the_mean_of_the_runs(task_grid):
    """summary.csv names the task type's primary metric per row, with <key>_mean and primary_mean equal to
    the mean over the row's runs (every other metric's <key>_mean too), and one row per method."""
    task_type, task, grid_dir = task_grid
    primary = PRIMARY_METRIC[task_type]
    groups = group_runs(read_results(grid_dir))
    frame = read_summary_csv(grid_dir)
    assert sorted(frame["label"]) == sorted(groups)
    for _, row in frame.iterrows():
        runs = groups[row["label"]]
        assert row["task"] == task and row["task_type"] == task_type
        assert row["primary"] == primary
        assert row["seeds"] == len(runs)
        assert row[f"{primary}_mean"] == pytest.approx(mean_metric(runs, primary), abs=1e-12)
        assert row["primary_mean"] == pytest.approx(mean_metric(runs, primary), abs=1e-12)
        for key in runs[0]["metrics"]:
            if all(r["metrics"].get(key) is not None for r in runs):
                assert row[f"{key}_mean"] == pytest.approx(mean_metric(runs, key), abs=1e-12), key


@pytest.mark.parametrize("output", TEXT_OUTPUTS)
def test_text_outputs_show_the_primary_metric_with_the_runs_mean(task_grid, output):
    """summary.md, report.md and report.html head a column with the primary metric's label, and each row
    shows the mean of its runs' result.json value (×100, two decimals) and its number of seeds."""
    task_type, task, grid_dir = task_grid
    primary = PRIMARY_METRIC[task_type]
    _, seeds_col, metric_col = HEADERS[output]
    metric_col = metric_col.format(METRICS[primary].label)
    groups = group_runs(read_results(grid_dir))
    rows = index_rows(read_main_table(grid_dir, output, task), output)
    assert set(rows) == set(groups)
    if output != "summary.md":  # the report's main table: the headline metric is its first score column
        first_score = list(next(iter(rows.values())))[2]
        assert first_score == metric_col, f"{output}: {first_score!r} before {metric_col!r}"
    for label, row in rows.items():
        assert metric_col in row, f"{output}: no {metric_col!r} column in {list(row)}"
        assert_shown(row[metric_col], mean_metric(groups[label], primary), f"{output} {label}")
        assert row[seeds_col] == str(len(groups[label]))


def test_report_html_and_its_plots_are_written(task_grid):
    """report.html is a whole page; every plot report.md links exists as a PNG next to the runs, the
    quality-cost plot among them, and report.html embeds each one."""
    _, task, grid_dir = task_grid
    page = (grid_dir / "report.html").read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", (grid_dir / "report.md").read_text(encoding="utf-8"))
    assert any(name.endswith("-tradeoff.png") for name in linked), linked
    for name in linked:
        path = grid_dir / name
        assert path.is_file(), f"report.md links {name}, which was not written"
        assert path.read_bytes()[:8] == PNG
    assert page.count("src='data:image/png;base64,") == len(linked)


# --- 2. a sweep's variants stay apart ----------------------------------------------------------------

SWEEP = {"base": {"task": "pubmed-rct", "model": "tiny-bert", "method": "lora", "data": DATA, "train": TRAIN},
         "grid": {"method_args.r": [2, 4], "seed": [0, 1]}}
SWEEP_ROWS = {"lora (r=2)": 2, "lora (r=4)": 2}  # label -> seeds


@pytest.fixture(scope="module")
def sweep_grid(tmp_path_factory, assets_ready) -> Path:
    """A lora rank sweep (r = 2, 4) at seeds 0 and 1 on pubmed-rct: four lora runs and the baseline."""
    return run_quiet_grid(SWEEP, tmp_path_factory.mktemp("sweep"), name="sweep")


def test_sweep_runs_record_their_variant(sweep_grid):
    """Each lora run's result.json carries the grid axis that set it, and the seed is not part of it."""
    lora = [r for r in read_results(sweep_grid) if r["method"] == "lora"]
    assert len(lora) == 4
    for result in lora:
        assert result["variant"] == {"method_args.r": result["config"]["method_args"]["r"]}
    assert sorted((r["variant"]["method_args.r"], r["seed"]) for r in lora) == [(2, 0), (2, 1), (4, 0), (4, 1)]


def test_sweep_variants_are_separate_rows_in_summary_csv(sweep_grid):
    """summary.csv has one lora row per rank, two seeds each, with its own mean; no pooled 4-seed row."""
    groups = group_runs(read_results(sweep_grid))
    frame = read_summary_csv(sweep_grid)
    lora = frame[frame["method"] == "lora"]
    assert dict(zip(lora["label"], lora["seeds"])) == SWEEP_ROWS
    assert list(lora["variant"]) == ["r=2", "r=4"]
    assert [json.loads(v) for v in lora["varying"]] == [{"method_args.r": 2}, {"method_args.r": 4}]
    for _, row in lora.iterrows():
        assert row["accuracy_mean"] == pytest.approx(mean_metric(groups[row["label"]], "accuracy"), abs=1e-12)


@pytest.mark.parametrize("output", TEXT_OUTPUTS)
def test_sweep_variants_are_separate_rows_in_every_text_output(sweep_grid, output):
    """summary.md, report.md and report.html each show `lora (r=2)` and `lora (r=4)` with 2 seeds apiece,
    each with its own mean, and no `lora` row pooling the 4 runs."""
    _, seeds_col, metric_col = HEADERS[output]
    groups = group_runs(read_results(sweep_grid))
    rows = index_rows(read_main_table(sweep_grid, output, "pubmed-rct"), output)
    lora = {label: row for label, row in rows.items() if label.startswith("lora")}
    assert {label: int(row[seeds_col]) for label, row in lora.items()} == SWEEP_ROWS
    accuracy_col = metric_col.format(METRICS["accuracy"].label)
    for label, row in lora.items():
        assert_shown(row[accuracy_col], mean_metric(groups[label], "accuracy"), f"{output} {label}")


# --- 3. runs of an older config are not seeds ---------------------------------------------------------

STALE = {"base": {"task": "pubmed-rct", "model": "tiny-bert", "method": "lora", "seed": 0, "data": DATA,
                  "train": TINY_TRAIN}}


@pytest.fixture(scope="module")
def stale_grid(tmp_path_factory, assets_ready) -> Path:
    """One grid name run twice into the same folder: with max_steps 2, then with `--set train.max_steps=3`,
    so the folder holds both configs' runs, each at seed 0."""
    runs_dir = tmp_path_factory.mktemp("stale")
    run_quiet_grid(STALE, runs_dir, name="stale")
    grid_dir = run_quiet_grid(STALE, runs_dir, name="stale", overrides=["train.max_steps=3"])
    lora = [r for r in read_results(grid_dir) if r["method"] == "lora"]
    assert sorted(r["config"]["train"]["max_steps"] for r in lora) == [2, 3]
    assert [r["seed"] for r in lora] == [0, 0] and [r["variant"] for r in lora] == [{}, {}]
    return grid_dir


def test_older_config_runs_are_separate_rows_in_summary_csv(stale_grid):
    """summary.csv shows two one-seed lora rows told apart by max_steps, not one lora row with 2 seeds."""
    frame = read_summary_csv(stale_grid)
    lora = frame[frame["method"] == "lora"]
    assert list(lora["seeds"]) == [1, 1]
    assert len(set(lora["variant"])) == 2 and all("max_steps" in v for v in lora["variant"]), list(lora["variant"])


@pytest.mark.parametrize("output", TEXT_OUTPUTS)
def test_older_config_runs_are_separate_rows_in_every_text_output(stale_grid, output):
    """summary.md, report.md and report.html show the two lora configs as two one-seed rows labelled by max_steps."""
    _, seeds_col, _ = HEADERS[output]
    rows = index_rows(read_main_table(stale_grid, output, "pubmed-rct"), output)
    lora = {label: row for label, row in rows.items() if label.startswith("lora")}
    assert len(lora) == 2 and all("max_steps" in label for label in lora), list(lora)
    assert [row[seeds_col] for row in lora.values()] == ["1", "1"]


def test_a_narrow_linear_x_axis_is_widened_so_a_small_error_bar_stays_small():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from medpeft.report.plots import widen_narrow_x

    fig, ax = plt.subplots()
    ax.errorbar([2.11], [78.7], xerr=[0.005])  # one row: 2.11 GiB +- 5 MiB
    widen_narrow_x(ax)
    lo, hi = ax.get_xlim()
    assert lo <= 2.11 - 0.2 and hi >= 2.11 + 0.2 and (hi - lo) == pytest.approx(0.2 * 2.11)
    ax.set_xlim(0, 100)  # already wide: left alone
    widen_narrow_x(ax)
    assert ax.get_xlim() == (0, 100)
    plt.close(fig)
