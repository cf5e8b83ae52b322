"""Synthetic grids in the result.json / predictions.jsonl contract, for the stats and report tests."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

ROUGE = ("rouge1", "rouge2", "rougeL", "rougeLsum")
LABELS = ["BACKGROUND", "METHODS", "RESULTS"]


def base_config(task: str, model: str, method: str, seed: int, **extra) -> dict:
    cfg = {"task": task, "model": model, "method": method, "seed": seed, "method_args": {},
           "data": {"train_size": 40, "test_size": 20}, "train": {"lr": 1e-3, "epochs": 1.0}}
    for dotted, value in extra.items():  # "method_args__r" -> cfg["method_args"]["r"]
        block, key = dotted.split("__")
        cfg[block][key] = value
    return cfg


def efficiency(method: str, total: int = 1_000_000) -> dict:
    trainable = {"full": total, "lora": total // 100, "ia3": total // 1000, "untrained": 0}.get(method, total // 50)
    return {"trainable_params": trainable, "total_params": total, "trainable_pct": 100 * trainable / total,
            "train_seconds": 10.0 if method == "full" else 5.0, "eval_seconds": 1.0, "train_tokens_per_second": 100.0,
            "peak_memory_bytes": 2**30 if method == "full" else 2**29, "adapter_bytes": trainable * 4}


def write_run(grid_dir: Path, run_id: str, cfg: dict, rows: list[dict], task_type: str, *, total: int = 1_000_000) -> dict:
    """One finished run: per-example rows are written, the run's metrics are their means."""
    if task_type == "summarization":
        metrics = {k: float(np.mean([r["scores"][k] for r in rows])) for k in ROUGE}
    else:
        metrics = {"accuracy": float(np.mean([r["correct"] for r in rows])), "macro_f1": 0.5, "auroc": 0.7}
    result = {"run_id": run_id, "status": "ok", "error": None, "task": cfg["task"], "task_type": task_type,
              "model": cfg["model"], "method": cfg["method"], "seed": cfg["seed"], "config": cfg,
              "metrics": metrics, "efficiency": efficiency(cfg["method"], total)}
    run_dir = Path(grid_dir) / run_id
    run_dir.mkdir(parents=True)
    (run_dir / "result.json").write_text(json.dumps(result))
    (run_dir / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return result


def summary_rows(scores: list[float]) -> list[dict]:
    """Summarization predictions whose every ROUGE variant equals the given per-example score."""
    return [{"id": f"doc{i}", "input": f"source text {i} " * 30, "reference": f"reference {i}",
             "prediction": f"output {i} scoring {s:.2f}", "scores": {k: s for k in ROUGE}} for i, s in enumerate(scores)]


def class_rows(correct: list[int]) -> list[dict]:
    rows = []
    for i, c in enumerate(correct):
        truth = i % len(LABELS)
        pred = truth if c else (truth + 1) % len(LABELS)
        probs = [0.1] * len(LABELS)
        probs[pred] = 0.8
        rows.append({"id": f"s{i}", "input": f"sentence {i}", "reference": LABELS[truth], "prediction": LABELS[pred],
                     "correct": int(c), "probs": probs})
    return rows


def write_failed(grid_dir: Path, run_id: str, cfg: dict, error: str) -> None:
    run_dir = Path(grid_dir) / run_id
    run_dir.mkdir(parents=True)
    result = {"run_id": run_id, "status": "failed", "error": error, "traceback": "Traceback (most recent call last): ...",
              "task": cfg["task"], "model": cfg["model"], "method": cfg["method"], "seed": cfg["seed"],
              "config": cfg, "metrics": {}, "efficiency": {}}
    (run_dir / "result.json").write_text(json.dumps(result))


def noisy(level: float, n: int, seed: int) -> list[float]:
    rng = np.random.default_rng(seed)
    return list(np.clip(level + 0.05 * rng.standard_normal(n), 0, 1))


def write_demo_grid(grid_dir: Path) -> Path:
    """Two summarization models (3 seeds of full and lora, lora also at r=4 / r=16, one seed of ia3),
    an untrained baseline per model, a failed run, and a classification task."""
    summ = "pubmed-conclusion"
    for model, total, shift in (("tiny", 1_000_000, 0.0), ("small", 10_000_000, 0.05)):
        write_run(grid_dir, f"{summ}.{model}.untrained.seed0", base_config(summ, model, "untrained", 0),
                  summary_rows(noisy(0.10 + shift, 20, 99)), "summarization", total=total)
        for seed in range(3):
            write_run(grid_dir, f"{summ}.{model}.full.seed{seed}", base_config(summ, model, "full", seed),
                      summary_rows(noisy(0.30 + shift, 20, seed)), "summarization", total=total)
            for r, level in ((4, 0.32), (16, 0.34)):
                write_run(grid_dir, f"{summ}.{model}.lora-r{r}.seed{seed}", base_config(summ, model, "lora", seed, method_args__r=r),
                          summary_rows(noisy(level + shift, 20, 10 + seed)), "summarization", total=total)
        write_run(grid_dir, f"{summ}.{model}.ia3.seed0", base_config(summ, model, "ia3", 0),
                  summary_rows(noisy(0.25 + shift, 20, 7)), "summarization", total=total)
    write_failed(grid_dir, f"{summ}.tiny.prompt_tuning.seed0", base_config(summ, "tiny", "prompt_tuning", 0),
                 "FloatingPointError: training loss is nan; lower train.lr")
    rct = "pubmed-rct"
    write_run(grid_dir, f"{rct}.enc.untrained.seed0", base_config(rct, "enc", "untrained", 0), class_rows([1, 0, 0] * 10), "classification")
    write_run(grid_dir, f"{rct}.enc.full.seed0", base_config(rct, "enc", "full", 0), class_rows([1, 1, 0] * 10), "classification")
    write_run(grid_dir, f"{rct}.enc.lora.seed0", base_config(rct, "enc", "lora", 0), class_rows([1, 1, 1] * 10), "classification")
    return grid_dir
