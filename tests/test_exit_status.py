"""`medpeft run` exits 0 exactly when every run finished and every output was written; 1 when a run
failed or an output could not be written; 2 when the grid cannot start (nothing trained). It ends with a
one-line account. A Makefile, a CI job or a Slurm array depends on this."""
from __future__ import annotations

import pytest

from medpeft import grid as grid_module
from medpeft.cli import main

from conftest import TINY_DATA, TINY_TRAIN


def write_grid(tmp_path, method_args: str = "{}", methods: str = "[lora]", name: str = "g") -> str:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"name: {name}\nbase:\n  task: pubmed-rct\n  model: tiny-bert\n  method_args: {method_args}\n"
                    f"  data: {TINY_DATA}\n  train: {TINY_TRAIN}\ngrid:\n  method: {methods}\n")
    return str(path)


def test_a_grid_whose_runs_all_finish_exits_0_with_an_account(tmp_path, capsys, assets_ready):
    code = main(["run", write_grid(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0
    assert "medpeft: done: 2 of 2 runs finished; report written" in out


@pytest.mark.parametrize("method_args", ["{target_modules: [nonexistent]}", "{lora_dropout: 0.0}"])
def test_a_failed_run_makes_the_grid_exit_1_and_names_it(method_args, tmp_path, capsys, assets_ready, monkeypatch):
    if "dropout" in method_args:  # a training step that raises (as a full disk or a library error would)
        from medpeft.run import execute

        def broken(plan, *args, **kwargs):
            if plan.config.method != "untrained":
                raise OSError(28, "No space left on device")
            return run_experiment(plan, *args, **kwargs)

        run_experiment = execute.run_experiment
        monkeypatch.setattr(execute, "run_experiment", broken)
    code = main(["run", write_grid(tmp_path, method_args), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 1
    assert "medpeft: FAILED: 1 of 2 runs finished; 1 failed (pubmed-rct.tiny-bert.lora.seed0." in err
    # a second call still fails (the failed run is tried again), and finished runs are kept
    assert main(["run", write_grid(tmp_path, method_args), "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 1


def test_a_report_that_cannot_be_written_makes_the_grid_exit_1(tmp_path, capsys, assets_ready, monkeypatch):
    from medpeft.report import build

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(tmp_path / "runs" / "g" / "report.html"))

    monkeypatch.setattr(build, "build_report", read_only)
    code = main(["run", write_grid(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    captured = capsys.readouterr()
    assert code == 1
    assert "report NOT written" in captured.err and "medpeft report" in captured.out + captured.err


def test_a_runs_folder_that_cannot_be_written_exits_2_before_any_training(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(grid_module, "run_plans", lambda *a, **k: pytest.fail("trained into an unwritable folder"))
    (tmp_path / "afile").write_text("")
    code = main(["run", write_grid(tmp_path), "--runs-dir", str(tmp_path / "afile")])
    err = capsys.readouterr().err
    assert code == 2
    assert "medpeft: error: cannot write to the grid's runs folder" in err and "--runs-dir" in err
    assert "Traceback" not in err


def test_report_on_a_folder_it_cannot_write_exits_2(tmp_path, capsys, assets_ready, monkeypatch):
    main(["run", write_grid(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--quiet"])
    capsys.readouterr()
    from medpeft import files

    def read_only(folder, what, fix):
        raise files.OutputError(f"cannot write to {what} {folder} (Permission denied); {fix}")

    monkeypatch.setattr(files, "check_writable_folder", read_only)
    code = main(["report", str(tmp_path / "runs" / "g")])
    assert code == 2
    assert "medpeft: error: cannot write to" in capsys.readouterr().err
