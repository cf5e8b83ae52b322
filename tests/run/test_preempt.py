"""Stop signals outside training, a second signal, and the exit a scheduler sees."""
from __future__ import annotations

import os
import signal

import pytest

from medpeft import cli
from medpeft import grid as grid_module
from medpeft.errors import Preempted
from medpeft.run.preempt import checkpoint_on_signal, stop_on_signal


def test_outside_training_a_signal_stops_at_once_with_a_message():
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(Preempted, match="stopped by SIGINT.*run the same command again") as stopped:
        with stop_on_signal():
            os.kill(os.getpid(), signal.SIGINT)
    assert stopped.value.signum == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is before


def test_in_training_the_first_signal_asks_for_a_checkpoint_and_the_second_stops_at_once(capsys, monkeypatch):
    from medpeft.run import preempt

    clock = [100.0]
    monkeypatch.setattr(preempt.time, "monotonic", lambda: clock[0])
    with pytest.raises(Preempted, match="received again"):
        with checkpoint_on_signal() as request:
            os.kill(os.getpid(), signal.SIGTERM)
            assert request.requested and request.signum == signal.SIGTERM  # training goes on to the step's end
            assert "saving a checkpoint after this training step" in capsys.readouterr().err
            clock[0] += preempt.SAME_STOP_S + 0.1
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_signals_at_once_are_one_request(capsys, monkeypatch):
    """Slurm signals every process of a job, and the grid's process passes its own SIGTERM on to its run's process
    (--backend processes; accelerate launch likewise): 2-3 SIGTERMs within milliseconds stopped the run at once,
    without its checkpoint (a review saw it in 4 of 5 stops)."""
    from medpeft.run import preempt

    clock = [100.0]
    monkeypatch.setattr(preempt.time, "monotonic", lambda: clock[0])
    with checkpoint_on_signal() as request:
        for sig in (signal.SIGTERM, signal.SIGTERM, signal.SIGINT):
            os.kill(os.getpid(), sig)
            clock[0] += 0.01
        assert request.signum == signal.SIGTERM  # still a checkpoint, then a stop
    err = capsys.readouterr().err
    assert err.count("received again within 2 s: taken as the same request") == 2


def test_the_cli_exits_with_the_signal_status_and_the_message(monkeypatch, capsys, tmp_path):
    def preempted(*args, **kwargs):
        raise Preempted("stopped by SIGTERM in training: checkpoint at step 3 in x; run the same command again", signal.SIGTERM)

    grid_file = tmp_path / "g.yaml"
    grid_file.write_text("base: {task: pubmed-rct, model: tiny-bert, method: lora}\n")
    monkeypatch.setattr(grid_module, "run_grid", preempted)
    assert cli.main(["run", str(grid_file)]) == 128 + signal.SIGTERM
    assert "medpeft: stopped by SIGTERM in training: checkpoint at step 3" in capsys.readouterr().err
