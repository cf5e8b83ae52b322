"""The model card reads the report's rows (report/frame.py), never groups seeds itself: a tuned run's card
counts its own seeds, not an untuned row's at the same learning rate as well (issue 29)."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as scipy_stats

from medpeft.run.record import RunResult
from medpeft.use.card import grid_frame, own_row

TUNING = {"role": "final", "group": "g1", "chosen": {"train.lr": 3e-4},
          "over": {"space": {"train.lr": [1e-4, 3e-4, 1e-3]}, "metric": "accuracy", "search": "grid"}}


def result(seed: int, accuracy: float, tuned: bool) -> RunResult:
    config = {"task": "t", "model": "m", "method": "lora", "seed": seed, "train": {"lr": 3e-4}}
    if tuned:
        config["tuning"] = TUNING
    return RunResult.from_json({"run_id": f"t.m.lora.{'tuned.' if tuned else ''}seed{seed}", "status": "ok", "task": "t",
                                "model": "m", "method": "lora", "seed": seed, "config": config, "task_type": "classification",
                                "metrics": {"accuracy": accuracy}, "efficiency": {"trainable_pct": 0.5}})


def test_the_card_counts_a_tuned_runs_own_seeds():
    untuned = [result(s, a, False) for s, a in enumerate((0.43, 0.52, 0.57))]
    tuned = [result(s, a, True) for s, a in enumerate((0.41, 0.58, 0.53))]
    row = own_row(tuned[0], grid_frame(tuned[0], untuned + tuned))
    assert row["seeds"] == 3 and row["accuracy_n"] == 3  # was 6: the untuned runs pooled in as seeds
    assert row["accuracy_std"] == pytest.approx(np.std((0.41, 0.58, 0.53), ddof=1))
    lo, hi = scipy_stats.t.interval(0.95, 2, loc=np.mean((0.41, 0.58, 0.53)), scale=scipy_stats.sem((0.41, 0.58, 0.53)))
    assert row["accuracy_ci"] == pytest.approx((lo, hi))


def test_a_run_outside_the_grid_is_its_own_row():
    alone = result(0, 0.5, False)
    row = own_row(alone, grid_frame(alone, [result(1, 0.6, True)]))
    assert row["seeds"] == 1 and row["run_ids"] == [alone.run_id]
