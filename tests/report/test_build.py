"""The report from synthetic grids: files, plots, failures, self-contained HTML, LaTeX, CLI and grid hook."""
from __future__ import annotations

import json
import logging
import re

import pytest
from report_fixtures import base_config, summary_rows, write_demo_grid, write_failed, write_run

from medpeft import cli, grid
from medpeft.report.build import build_report
from medpeft.report.tables import latex_escape

RESAMPLES = 200  # enough to exercise every path; the default (2000) is for real reports


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    grid_dir = write_demo_grid(tmp_path_factory.mktemp("grid") / "demo")
    return grid_dir, build_report(grid_dir, n_resamples=RESAMPLES)


def test_report_files_are_written_next_to_the_runs(demo):
    grid_dir, paths = demo
    for key in ("html", "md", "tex"):
        assert paths[key].parent == grid_dir and paths[key].stat().st_size > 0


def test_every_plot_exists_and_is_a_non_empty_png(demo):
    grid_dir, paths = demo
    names = {p.name for p in paths["plots"]}
    assert names == {f"report-{name}.png" for name in ("pubmed-conclusion-tradeoff", "pubmed-conclusion-sensitivity-method-args-r",
                                                       "pubmed-conclusion-model-size", "pubmed-rct-tradeoff", "pubmed-rct-confusion")}
    assert not [d for d in grid_dir.iterdir() if d.is_dir() and not (d / "result.json").exists()]  # every folder is a run
    for path in paths["plots"]:
        assert path.parent == grid_dir
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5000


def test_html_is_self_contained_with_every_plot_embedded(demo):
    _, paths = demo
    page = paths["html"].read_text()
    assert page.count("src='data:image/png;base64,") == len(paths["plots"])
    assert not re.search(r"src=['\"](?!data:)", page)  # no image, script or style fetched from elsewhere
    assert "<link" not in page and "<script" not in page


def test_failed_runs_are_listed_with_their_error(demo):
    _, paths = demo
    for key in ("html", "md"):
        text = paths[key].read_text()
        assert "Failures (1)" in text
        assert "pubmed-conclusion.tiny.prompt_tuning.seed0" in text
        assert "training loss is nan" in text


def test_answer_first_and_table_contents(demo):
    _, paths = demo
    md = paths["md"].read_text()
    summ = md.split("## pubmed-conclusion")[1].split("## pubmed-rct")[0]
    assert summ.index("**Answer first**") < summ.index("### Main table")
    # the best row: lora r=16 on the small model (0.34 + 0.05), three seeds
    assert "**Best ROUGE-1: lora (r=16) · small**" in summ
    assert "rougeLsum" in summ and "ROUGE-Lsum" in summ  # the ROUGE-L variant is stated
    assert "ia3" in summ and "only 1 seed" in summ  # the single-seed group is there, with its caveat
    assert "Cheapest not significantly worse" in summ or "Within 1 point" in summ or "Nothing cheaper" in summ
    rct = md.split("## pubmed-rct")[1]
    assert "Confusion matrix" in rct and "rougeLsum" not in rct  # the ROUGE-L note only where ROUGE is shown


def test_latex_table_has_a_bold_best_and_escaped_names(demo):
    _, paths = demo
    tex = paths["tex"].read_text()
    assert tex.count(r"\begin{tabular}") == 2 and r"\toprule" in tex
    assert r"\textbf{" in tex and r"$\pm$" in tex
    assert "prompt_tuning" not in tex.replace(r"prompt\_tuning", "")  # every underscore escaped
    assert latex_escape("a_b 5% {x}") == r"a\_b 5\% \{x\}"


def test_report_is_deterministic(demo, tmp_path):
    grid_dir, paths = demo
    again = build_report(write_demo_grid(tmp_path / grid_dir.name), n_resamples=RESAMPLES)
    assert again["html"].read_text() == paths["html"].read_text()  # same runs, same bytes: fixed RNG seeds


def test_a_figure_the_report_no_longer_draws_is_removed(tmp_path):
    import os

    grid_dir = write_demo_grid(tmp_path / "demo")
    stale = grid_dir / "report-gone-task-sensitivity-r.png"
    stale.write_bytes(b"an earlier rendering's figure")
    os.utime(stale, (1_000_000_000, 1_000_000_000))
    paths = build_report(grid_dir, n_resamples=RESAMPLES)
    assert not stale.exists()
    assert paths["plots"] and all(p.exists() for p in paths["plots"])  # what this rendering drew stays
    assert all(p.name in paths["html"].read_text() or p in paths["plots"] for p in grid_dir.glob("report-*.png"))


def test_report_of_only_failures_and_unfinished_runs(tmp_path):
    write_failed(tmp_path, "t.m.lora.seed0", base_config("t", "m", "lora", 0), "ModelError: cannot apply")
    (tmp_path / "t.m.full.seed0").mkdir()  # still running: no result.json
    paths = build_report(tmp_path, n_resamples=RESAMPLES)
    page = paths["html"].read_text()
    assert "No finished runs yet" in page and "ModelError: cannot apply" in page
    assert "t.m.full.seed0" in page and "Unfinished (1" in page
    assert paths["plots"] == []


def test_cli_report_prints_the_paths(tmp_path, capsys):
    write_run(tmp_path, "t.m.lora.seed0", base_config("t", "m", "lora", 0), summary_rows([0.3, 0.4]), "summarization")
    assert cli.main(["report", str(tmp_path), "--resamples", "100"]) == 0
    out = capsys.readouterr().out.split()
    assert out == [str(tmp_path / "report.html"), str(tmp_path / "report.md"), str(tmp_path / "report.tex")]


def test_cli_report_on_a_missing_folder_exits_2(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 2
    assert "not a directory" in capsys.readouterr().err


def test_cli_report_on_the_runs_folder_or_a_runs_own_folder_exits_2_and_writes_nothing(tmp_path, capsys):
    """Both wrote an empty report and exited 0: runs/ listed every grid as an unfinished run."""
    grid = tmp_path / "runs" / "quick"
    write_run(grid, "t.m.lora.seed0", base_config("t", "m", "lora", 0), summary_rows([0.3, 0.4]), "summarization")
    (grid / "grid.json").write_text("{}")
    assert cli.main(["report", str(tmp_path / "runs")]) == 2
    assert f"report one: medpeft report {grid}" in capsys.readouterr().err
    assert cli.main(["report", str(grid / "t.m.lora.seed0")]) == 2
    assert f"one run's folder; report its grid: medpeft report {grid}" in capsys.readouterr().err
    assert not list(tmp_path.rglob("report.*"))
    assert cli.main(["report", str(grid), "--resamples", "50"]) == 0


def test_run_grid_survives_a_broken_report(tmp_path, monkeypatch, assets_ready):
    """A report failure is a warning: the grid's finished runs and summary stay."""
    from medpeft.config import expand_grid
    from medpeft.report import build
    from medpeft.run import execute
    from medpeft.run.record import RunResult

    def fake_run(plan, run_dir):
        result = RunResult.succeeded(plan.config, plan.config.variant, task_type="classification",
                                     metrics={"accuracy": 0.5}, efficiency={"trainable_pct": 1.0})
        result.write(run_dir)
        return result

    def broken(*args, **kwargs):
        raise RuntimeError("plotting exploded")

    monkeypatch.setattr(execute, "run_experiment", fake_run)
    monkeypatch.setattr(build, "task_sections", broken)
    logs = []
    spec = {"base": {"task": "pubmed-rct", "model": "tiny-bert", "method": "lora"}}
    grid_dir = grid.run_grid(expand_grid(spec, name="g"), tmp_path, log=logs.append).grid_dir
    assert (grid_dir / "summary.md").is_file()
    assert any("### pubmed-rct" in line for line in logs)  # the summary is printed even though the report broke
    assert any("warning: report not written" in line and "plotting exploded" in line for line in logs)


def test_learning_curve_plots_score_against_training_examples(tmp_path, monkeypatch):
    """A data.train_size axis draws one line per method over the examples each row trained on."""
    import json as _json

    from matplotlib.axes import Axes

    from medpeft.report.build import build_report
    from report_fixtures import base_config, class_rows, write_run

    grid_dir = tmp_path / "curve"
    for method, levels in (("lora", (0.5, 0.7, 0.8)), ("full", (0.4, 0.6, 0.85))):
        for size, level in zip((16, 64, 256), levels):
            for seed in (0, 1, 2):
                cfg = base_config("pubmed-rct", "m", method, seed, data__train_size=size)
                n = 20
                correct = [1 if i < round(level * n) + (seed - 1) else 0 for i in range(n)]
                result = write_run(grid_dir, f"{method}.{size}.s{seed}", cfg, class_rows(correct), "classification")
                result.update(variant={"data.train_size": size}, data={"train": {"examples": size - 1}})
                (grid_dir / f"{method}.{size}.s{seed}" / "result.json").write_text(_json.dumps(result))
    drawn = []
    real = Axes.errorbar
    def errorbar(self, x, y, *a, **k):
        drawn.append((k.get("label"), list(x), list(y), k.get("yerr")))
        return real(self, x, y, *a, **k)

    monkeypatch.setattr(Axes, "errorbar", errorbar)
    build_report(grid_dir, n_resamples=50)
    assert (grid_dir / "report-pubmed-rct-learning-curve.png").is_file()
    curves = {label: (x, y, err) for label, x, y, err in drawn if label and label.endswith("· m") and len(x) == 3}
    assert set(curves) == {"lora · m", "full · m"}
    x, y, err = curves["full · m"]
    assert x == [15, 63, 255]  # the training examples the runs recorded, not the setting
    assert y == pytest.approx([100 * (round(0.4 * 20) / 20), 100 * round(0.6 * 20) / 20, 100 * round(0.85 * 20) / 20], abs=1e-6)
    assert (err > 0).all()  # seed error bars


def test_no_examples_report_holds_no_text_of_the_data(tmp_path):
    """A report to share: not one source, reference or prediction string of any run appears in it."""
    from pathlib import Path

    grid_dir = write_demo_grid(tmp_path / "demo")
    texts = set()
    for pred_file in grid_dir.glob("*/predictions.jsonl"):
        for line in pred_file.read_text().splitlines():
            row = json.loads(line)
            if "pubmed-rct" not in pred_file.parent.name:  # class names are labels, not patient text
                texts |= {row["input"].strip(), row["reference"], row["prediction"]}
            texts.add(row["input"].strip())

    def leaked(paths):
        written = "\n".join(Path(p).read_text() for p in paths)
        return {t for t in texts if t in written}

    outputs = lambda p: [p["html"], p["md"], p["tex"], grid_dir / "summary.md", grid_dir / "summary.csv"]  # noqa: E731
    assert leaked(outputs(build_report(grid_dir, n_resamples=RESAMPLES)))  # the full report shows examples
    shared = build_report(grid_dir, n_resamples=RESAMPLES, examples=False)
    assert leaked(outputs(shared)) == set()
    assert "--no-examples" in Path(shared["html"]).read_text()


def test_keys_set_together_get_one_sensitivity_plot(tmp_path):
    """A rank sweep sets lora_alpha = 2r in every row: one plot, titled with both keys; two keys that
    vary independently (or pair one value with two) each keep their own."""
    import json as _json

    from medpeft.report.build import build_report, tied_keys
    from report_fixtures import base_config, class_rows, write_run

    grid_dir = tmp_path / "rank"
    for r in (2, 8, 32):
        for seed in (0, 1):
            cfg = base_config("pubmed-rct", "m", "lora", seed, method_args__r=r, method_args__lora_alpha=2 * r)
            result = write_run(grid_dir, f"r{r}.s{seed}", cfg, class_rows([1] * {2: 3, 8: 6, 32: 8}[r] + [0] * (10 - {2: 3, 8: 6, 32: 8}[r])), "classification")
            result.update(variant={"method_args.r": r, "method_args.lora_alpha": 2 * r})
            (grid_dir / f"r{r}.s{seed}" / "result.json").write_text(_json.dumps(result))
    build_report(grid_dir, n_resamples=50)
    assert sorted(p.name for p in grid_dir.glob("*sensitivity*")) == ["report-pubmed-rct-sensitivity-method-args-r.png"]
    report = (grid_dir / "report.md").read_text()
    assert "Sensitivity to `method_args.r` (with `method_args.lora_alpha`, set together with it in every row)" in report  # the grid names r first
    assert report.count("### Sensitivity to") == 1
    rows = [{"a": 1, "b": 2}, {"a": 2, "b": 4}, {}]
    assert tied_keys(rows, ["a", "b"]) == {"b": "a"}
    assert tied_keys(rows + [{"a": 3, "b": 2}], ["a", "b"]) == {}  # b = 2 beside a = 1 and a = 3
    assert tied_keys(rows + [{"a": 3}], ["a", "b"]) == {}  # a without b
    assert tied_keys([{"a": 1, "b": 1}, {"a": 1, "b": 2}], ["a", "b"]) == {}


def test_model_size_plot_only_when_the_models_differ_in_size():
    """A model and its domain-pretrained copy are one size: adapters' extra parameters must not spread
    them over a size axis (the domain-pretraining grid drew such a plot)."""
    import pandas as pd

    from medpeft.report import plots

    base = 22_713_216
    rows = [("minilm", "full", base), ("minilm", "lora", base + 149_400), ("minilm", "untrained", base),
            ("minilm-medline", "full", base), ("minilm-medline", "ia3", base + 18_100)]
    frame = pd.DataFrame(rows, columns=["model", "method", "total_params"])
    assert plots.model_params(frame) == {"minilm": base, "minilm-medline": base}
    assert not plots.sizes_differ(frame)
    larger = pd.concat([frame, pd.DataFrame([("bigger", "lora", 3 * base)], columns=frame.columns)])
    assert plots.sizes_differ(larger)
    assert not plots.sizes_differ(frame[frame["model"] == "minilm"])  # one model: nothing to plot


def test_the_report_warns_when_a_method_predicts_one_label_for_everything(tmp_path):
    """Drug reviews at a small budget: every method said "positive" for every review, so each accuracy
    was the test set's share of positives. The report says so for such a row and for no other."""
    from report_fixtures import LABELS, class_rows

    truth = [LABELS[i % 3] if i % 4 else LABELS[0] for i in range(12)]  # a majority label, as in drug reviews
    for seed in range(3):
        collapsed = [{"id": f"s{i}", "input": f"review {i}", "reference": t, "prediction": LABELS[0],
                      "correct": int(t == LABELS[0]), "probs": [0.6, 0.2, 0.2]} for i, t in enumerate(truth)]
        write_run(tmp_path, f"t.m.ia3.seed{seed}", base_config("t", "m", "ia3", seed), collapsed, "classification")
        write_run(tmp_path, f"t.m.lora.seed{seed}", base_config("t", "m", "lora", seed), class_rows([1, 0] * 6), "classification")
    write_run(tmp_path, "t.m.untrained.seed0", base_config("t", "m", "untrained", 0), collapsed, "classification")
    share = 100 * sum(t == LABELS[0] for t in truth) / len(truth)
    md = build_report(tmp_path, n_resamples=50)["md"].read_text()
    warned = [line for line in md.splitlines() if "for every test example" in line]
    assert len(warned) == 1 and "ia3" in warned[0] and repr(LABELS[0]) in warned[0]
    assert f"{share:.2f}" in warned[0] and "all 3 seeds" in warned[0]


def test_the_one_label_warning_judges_each_seed_and_only_complete_rows(tmp_path):
    """Seeds that each say one label, but different ones, are flagged; a row with a seed whose
    predictions are missing is not judged."""
    from report_fixtures import LABELS

    def collapsed(label):
        return [{"id": f"s{i}", "input": f"review {i}", "reference": LABELS[i % 3], "prediction": label,
                 "correct": int(LABELS[i % 3] == label), "probs": [0.4, 0.3, 0.3]} for i in range(9)]

    for seed in range(2):
        write_run(tmp_path, f"t.m.ia3.seed{seed}", base_config("t", "m", "ia3", seed), collapsed(LABELS[seed]), "classification")
        write_run(tmp_path, f"t.m.lora.seed{seed}", base_config("t", "m", "lora", seed), collapsed(LABELS[0]), "classification")
    (tmp_path / "t.m.lora.seed1" / "predictions.jsonl").unlink()
    md = build_report(tmp_path, n_resamples=50)["md"].read_text()
    warned = [line for line in md.splitlines() if "for every test example" in line]
    assert len(warned) == 1 and "ia3" in warned[0] and "all 2 seeds" in warned[0]
    assert f"{LABELS[0]!r} or {LABELS[1]!r}" in warned[0]


def test_a_learning_curve_names_a_setting_that_changed_with_the_training_size(tmp_path):
    """sentence-roles: 3,000 sentences at 2 epochs against 6,000 at 3; the curve is not the data alone,
    and its title says so (one figure, no separate epochs plot)."""
    import json as _json

    from medpeft.report.build import build_report
    from report_fixtures import base_config, class_rows, write_run

    grid_dir = tmp_path / "sizes"
    for size, epochs, right in ((40, 2.0, 5), (80, 3.0, 8)):
        for seed in (0, 1):
            cfg = base_config("pubmed-rct", "m", "full", seed, data__train_size=size, train__epochs=epochs)
            result = write_run(grid_dir, f"n{size}.s{seed}", cfg, class_rows([1] * right + [0] * (10 - right)), "classification")
            result.update(variant={"data.train_size": size, "train.epochs": epochs})
            (grid_dir / f"n{size}.s{seed}" / "result.json").write_text(_json.dumps(result))
    build_report(grid_dir, n_resamples=50)
    report = (grid_dir / "report.md").read_text()
    assert "### Learning curve (with `train.epochs`, set together with it in every row)" in report
    assert not list(grid_dir.glob("*sensitivity*"))


def set_metric(run_dir, key: str, value) -> None:
    path = run_dir / "result.json"
    data = json.loads(path.read_text())
    data["metrics"][key] = value
    path.write_text(json.dumps(data))  # NaN as Python's json writes it (and reads it back)


def test_broken_result_files_and_nan_metrics_leave_the_report_whole(tmp_path, caplog):
    grid_dir = write_demo_grid(tmp_path / "demo")
    (grid_dir / "pubmed-rct.enc.full.seed0" / "result.json").write_text("null")
    (grid_dir / "pubmed-conclusion.small.ia3.seed0" / "result.json").write_text("[]")
    for run_id in ("pubmed-rct.enc.lora.seed0", "pubmed-rct.enc.untrained.seed0"):  # no row of the task keeps a score
        set_metric(grid_dir / run_id, "accuracy", float("nan"))
    set_metric(grid_dir / "pubmed-conclusion.tiny.lora-r4.seed1", "rouge1", float("nan"))  # one seed of a row
    with caplog.at_level(logging.WARNING, logger="medpeft"):
        assert cli.main(["report", str(grid_dir), "--resamples", str(RESAMPLES)]) == 0
    for broken in ("pubmed-rct.enc.full.seed0", "pubmed-conclusion.small.ia3.seed0"):
        assert str(grid_dir / broken / "result.json") in caplog.text  # which file, said
        assert f"`{broken}`" in (grid_dir / "report.md").read_text().split("Unfinished")[1]  # listed as unfinished
    assert f"{grid_dir / 'pubmed-rct.enc.lora.seed0' / 'result.json'}: metric(s) accuracy" in caplog.text
    assert (grid_dir / "report-pubmed-conclusion-tradeoff.png").is_file()


HOSTILE = {"task": "<script>alert('task')</script>", "model": "<img src=x onerror=alert('model')>",
           "label": "<b onmouseover=alert('label')>pos</b>", "text": "<iframe src=javascript:alert('text')>"}
RAW_HTML = re.compile(r"<(script|img src=x|b onmouseover|iframe|i>)", re.I)  # the user's HTML, as a viewer would run it


def hostile_rows(correct: list[int]) -> list[dict]:
    labels = [HOSTILE["label"], "neg &amp; other"]
    return [{"id": f"<i>{i}</i>", "input": HOSTILE["text"], "reference": labels[i % 2],
             "prediction": labels[i % 2] if c else labels[1 - i % 2], "correct": c} for i, c in enumerate(correct)]


def test_html_in_names_labels_and_texts_is_shown_not_run_in_the_markdown(tmp_path):
    markdown_it = pytest.importorskip("markdown_it")
    grid_dir = tmp_path / "g"
    for method, correct in (("untrained", [1, 0] * 6), ("full", [1, 1, 0] * 4), ("lora", [1, 1, 1, 0] * 3)):
        cfg = base_config(HOSTILE["task"], HOSTILE["model"], method, 0)
        write_run(grid_dir, f"run-{method}", cfg, hostile_rows(correct), "classification")
    write_failed(grid_dir, "run-failed", base_config(HOSTILE["task"], HOSTILE["model"], "ia3", 0), f"ValueError: {HOSTILE['label']}")
    for method, level in (("untrained", 0.1), ("lora", 0.3)):  # a summarization task: its examples are texts
        rows = [dict(r, id=f"<i>{i}</i>", input=HOSTILE["text"], prediction=HOSTILE["label"])
                for i, r in enumerate(summary_rows([level] * 6))]
        write_run(grid_dir, f"summ-{method}", base_config("summ", HOSTILE["model"], method, 0), rows, "summarization")
    paths = build_report(grid_dir, n_resamples=RESAMPLES)
    viewer = markdown_it.MarkdownIt("commonmark").enable("table")
    for name in ("report.md", "summary.md"):
        text = (grid_dir / name).read_text()
        shown = viewer.render(text)
        assert not RAW_HTML.search(shown), (name, RAW_HTML.search(shown))
        assert "&lt;script&gt;alert('task')&lt;/script&gt;" in shown  # the user's text, shown as written
        assert "&lt;img src=x onerror=alert('model')&gt;" in shown
    shown = viewer.render(paths["md"].read_text())
    assert "&lt;b onmouseover=alert('label')&gt;pos&lt;/b&gt;" in shown and "neg &amp;amp; other" in shown
    assert "<code>&lt;i&gt;" in shown and "&lt;iframe" in shown  # an example's id and its text
    assert not RAW_HTML.search(paths["html"].read_text())  # the HTML report: escaped, as before


def test_the_header_says_where_and_in_what_precision_the_runs_trained(tmp_path):
    """Each device, precision and version that occurs, counted where the runs differ; an older result.json
    without env or levers reads as unrecorded, never as an error."""
    grid_dir = tmp_path / "g"
    env = {"device": "cpu:x86_64 x2 threads", "git_commit": "0123456789abcdef+dirty",
           "versions": {"torch": "2.13.0+cpu", "transformers": "5.23.0", "peft": "0.21.2", "numpy": "2.4.6"}}
    for seed, precision, base in ((0, "bf16", True), (1, "bf16", True), (2, "fp32", False)):
        cfg = base_config("pubmed-conclusion", "smollm2-135m", "lora", seed, train__precision=precision)
        result = write_run(grid_dir, f"lora{seed}", cfg, summary_rows([0.3, 0.4]), "summarization")
        path = grid_dir / f"lora{seed}" / "result.json"
        path.write_text(json.dumps(dict(result, env=env, training={"levers": {"bf16_base": base}})))
    write_run(grid_dir, "old", base_config("pubmed-conclusion", "smollm2-135m", "full", 0), summary_rows([0.3]), "summarization")
    build_report(grid_dir, n_resamples=50)
    header = (grid_dir / "report.md").read_text().split("\n\n")[1]
    assert header.endswith(" Trained on cpu:x86_64 x2 threads in bf16 mixed precision with the frozen base in bf16 (2 runs), "
                           "fp32 (1 run); torch 2.13.0+cpu; transformers 5.23.0; peft 0.21.2; medpeft 0123456+dirty.")
    assert "frozen base in bf16 (2 runs)" in (grid_dir / "report.html").read_text()


def test_an_examples_long_reference_is_cut_as_the_outputs_beside_it(tmp_path):
    """A reference as long as a whole abstract was printed whole next to outputs cut at 600 characters."""
    from medpeft.report.sections import OUTPUT_CHARS

    grid_dir = tmp_path / "g"
    for seed in range(2):
        rows = summary_rows([0.2, 0.4, 0.6, 0.8])
        for row in rows:
            row["reference"] = f"{row['id']} reference sentence. " * 80  # about 2,000 characters
        write_run(grid_dir, f"lora{seed}", base_config("pubmed-conclusion", "smollm2-135m", "lora", seed), rows, "summarization")
    build_report(grid_dir, n_resamples=50)
    text = (grid_dir / "report.md").read_text()
    references = [line for line in text.splitlines() if line.startswith("- *Reference*: ")]
    assert references and all(len(line) - len("- *Reference*: ") <= OUTPUT_CHARS + 2 and line.endswith(" …") for line in references)
