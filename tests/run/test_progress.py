"""Progress you can see: a bar per run and a grid bar, `medpeft run --quiet` and `--verbose`, and every
run's log lines in its train.log."""
from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from medpeft import cli
from medpeft import grid as grid_module
from medpeft.run import progress

GRID = """
name: shown
base: {task: pubmed-rct, model: tiny-bert, method: lora, data: {train_size: 8, val_size: 0, test_size: 4},
       train: {max_steps: 2, batch_size: 4, eval_batch_size: 4}}
"""
BAR = "%|"  # what every tqdm bar line holds


def run_cli(tmp_path, capsys, *flags: str):
    grid_file = tmp_path / "grid.yaml"
    grid_file.write_text(GRID)
    assert cli.main(["run", str(grid_file), "--runs-dir", str(tmp_path / "runs"), *flags]) == 0
    out, err = capsys.readouterr()
    return out, err, sorted(d for d in (tmp_path / "runs" / "shown").iterdir() if d.is_dir())


@pytest.fixture
def no_report(monkeypatch):
    monkeypatch.setattr(grid_module, "write_outputs", lambda *a: [])  # the report is not what is tested


def test_quiet_prints_one_line_per_run_and_no_bars(tmp_path, capsys, assets_ready):
    out, err, run_dirs = run_cli(tmp_path, capsys, "--quiet")
    lines = out.splitlines()
    assert len(run_dirs) == 2  # the lora run and its untrained baseline
    per_run = [line for line in lines if line.startswith("[")]
    assert len(per_run) == 2 and all("accuracy=" in line and "% trainable" in line for line in per_run)
    assert [line for line in lines if line not in per_run] == [next(line for line in lines if line.startswith("report: ")),
                                                              next(line for line in lines if line.startswith("medpeft: done: 2 of 2 runs"))]
    assert BAR not in err and "{'loss'" not in out
    for run_dir in run_dirs:  # the log is written whatever is shown
        log = (run_dir / progress.LOG_FILE).read_text()
        assert run_dir.name in log and "accuracy=" in log
    trained = next(d for d in run_dirs if ".lora." in d.name)
    assert "step 2/2" in (trained / progress.LOG_FILE).read_text() and "loss=" in (trained / progress.LOG_FILE).read_text()


def test_default_shows_bars_and_no_raw_logs(tmp_path, capsys, no_report, assets_ready):
    out, err, run_dirs = run_cli(tmp_path, capsys)
    assert "grid shown" in err and "/2 [" in err and BAR in err  # the grid bar: runs done / total
    assert "training" in err  # the run's bar
    assert "{'loss'" not in out and "[1/2]" in out and "[2/2]" in out


def test_verbose_also_prints_the_raw_logs(tmp_path, capsys, no_report, assets_ready):
    out, err, _ = run_cli(tmp_path, capsys, "--verbose")
    assert "{'loss'" in out and BAR in err


def test_quiet_and_verbose_exclude_each_other(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["run", str(tmp_path / "g.yaml"), "--quiet", "--verbose"])
    assert "not allowed with" in capsys.readouterr().err


def state(step=1, max_steps=4, tokens=0):
    return SimpleNamespace(global_step=step, max_steps=max_steps, num_input_tokens_seen=tokens)


def test_train_progress_files_every_log_and_shows_loss_and_tokens_per_second(tmp_path, capsys):
    shown = progress.TrainProgress(tmp_path)
    with progress.showing("normal"):
        shown.on_train_begin(None, state(0), None)
        shown.on_log(None, state(1), None, logs={"loss": 2.5, "learning_rate": 1e-3, "total_flos": 1.0})
        shown.on_step_end(None, state(1, tokens=640), None)
        assert shown.bar.postfix.startswith("loss=2.5") and "tokens/s=" in shown.bar.postfix
        shown.on_train_end(None, state(4), None)
    assert shown.bar is None
    log = (tmp_path / progress.LOG_FILE).read_text()
    assert "step 1/4 loss=2.5 learning_rate=0.001" in log and "total_flos" not in log
    assert BAR in capsys.readouterr().err


def test_a_resumed_run_starts_its_bar_at_the_checkpoint_step(tmp_path):
    shown = progress.TrainProgress(tmp_path)
    shown.on_train_begin(None, state(3, 8), None)
    assert shown.bar.n == 3 and shown.bar.total == 8
    shown.close()


def test_the_run_log_keeps_medpeft_warnings_and_lines(tmp_path):
    lines = []
    with progress.run_log(tmp_path, lines.append) as log:
        log("[1/1] some-run")
        logging.getLogger("medpeft").warning("40% of the train inputs were truncated")
    logging.getLogger("medpeft").warning("after the run: not in its log")
    text = (tmp_path / progress.LOG_FILE).read_text()
    assert lines == ["[1/1] some-run"]
    assert "[1/1] some-run" in text and "warning: 40% of the train inputs were truncated" in text
    assert "after the run" not in text


def test_a_warning_is_printed_once_when_a_library_configures_logging_mid_run(tmp_path, capsys):
    """absl (rouge_score's logging) calls logging.basicConfig() at its first message: every later medpeft
    warning was printed twice, once as WARNING:medpeft:..."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()  # as in `medpeft run`: nobody has configured logging (pytest has)
    try:
        with progress.run_log(tmp_path, lambda *_: None):
            logging.basicConfig()
            logging.getLogger("medpeft").warning("40% of the train inputs were truncated")
    finally:
        root.handlers[:] = saved
    err = capsys.readouterr().err
    assert err.count("40% of the train inputs were truncated") == 1 and "WARNING:medpeft" not in err
    assert logging.getLogger("medpeft").propagate  # given back


def test_the_command_lines_warnings_are_printed_once_and_plainly_across_runs(tmp_path, capsys):
    """The second run's warnings still came out as WARNING:medpeft:... glued to the bar: after absl's
    basicConfig the next run saw a handler and left the printing to it."""
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    try:
        progress.console_logging()  # what `medpeft` does first
        for run in ("a", "b"):
            with progress.run_log(tmp_path / run, lambda *_: None):
                logging.basicConfig()  # absl, at rouge_score's first message: a no-op now
                logging.getLogger("medpeft").warning(f"run {run}: 40% truncated")
        logging.getLogger("medpeft").warning("between runs")
    finally:
        root.handlers[:] = saved
    err = capsys.readouterr().err
    assert [err.count(f"run {r}: 40% truncated") for r in "ab"] == [1, 1] and err.count("between runs") == 1
    assert "WARNING:" not in err
    assert "40% truncated" in (tmp_path / "b" / progress.LOG_FILE).read_text()


def test_an_unknown_level_is_an_error():
    with pytest.raises(ValueError, match="quiet, normal, verbose"):
        with progress.showing("loud"):
            pass
