"""Tiny finished runs for the use/ tests, each trained at most once per test session, in grid folders."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest

from medpeft.config import config_from_dict

DATA = {"train_size": 8, "val_size": 0, "test_size": 4, "max_source_tokens": 32, "max_target_tokens": 8}
# A high learning rate, so a trained adapter visibly moves the base's outputs (a reload test can then fail).
TRAIN = {"max_steps": 2, "batch_size": 4, "eval_batch_size": 4, "lr": 1e-2}
CHAT_TEMPLATE = ("{% for m in messages %}[unused1]{{ m['role'] }}: {{ m['content'] }}[SEP]{% endfor %}"
                 "{% if add_generation_prompt %}[unused1]assistant: {% endif %}")
RUNS = {  # name -> (grid folder, task, model, method, seed)
    "rct-lora": ("rct", "pubmed-rct", "tiny-bert", "lora", 0),
    "rct-lora-seed1": ("rct", "pubmed-rct", "tiny-bert", "lora", 1),
    "rct-full": ("rct", "pubmed-rct", "tiny-bert", "full", 0),
    "rct-prompt": ("rct", "pubmed-rct", "tiny-bert", "prompt_tuning", 0),
    "rct-ia3": ("rct", "pubmed-rct", "tiny-bert", "ia3", 0),
    "rct-dora": ("rct", "pubmed-rct", "tiny-bert", "dora", 0),
    "rct-untrained": ("rct", "pubmed-rct", "tiny-bert", "untrained", 0),
    "context-lora": ("context", "pubmed-rct-context", "tiny-bert", "lora", 0),
    "t5-lora": ("summ", "pubmed-conclusion", "tiny-t5", "lora", 0),
    "t5-untrained": ("summ", "pubmed-conclusion", "tiny-t5", "untrained", 0),
    "llama-prompt": ("summ", "pubmed-conclusion", "tiny-llama", "prompt_tuning", 0),
    "chat-lora": ("chat", "pubmed-conclusion", "chat-llama", "lora", 0),
    "t5-lora-bf16": ("summ", "pubmed-conclusion", "tiny-t5", "lora", 0),  # the frozen base held in bf16 (PRECISIONS)
    "t5-lora-fp32": ("summ", "pubmed-conclusion", "tiny-t5", "lora", 0),
    "chat-lora-bf16": ("chat", "pubmed-conclusion", "chat-llama", "lora", 0),
    "mesh-lora": ("mesh", "mesh", "tiny-bert", "lora", 0),
    "mesh-lora-bf16": ("mesh", "mesh", "tiny-bert", "lora", 0),  # trained under bf16 autocast, evaluated without it
    "ner-lora": ("ner", "ner", "tiny-bert", "lora", 0),
    "ner-prompt": ("ner", "ner", "tiny-bert", "prompt_tuning", 0),
    "local-lora": ("local", "pubmed-rct", "local-bert", "lora", 0),  # a base in a folder of your own (fingerprinted)
}
# a run name's suffix -> its precision, whatever auto would choose here (bf16: as on a CPU with bf16 instructions)
PRECISIONS = {"-bf16": {"precision": "bf16", "bf16_base": True}, "-fp32": {"precision": "fp32"}}
_CACHE: dict[str, tuple] = {}  # shared by every test module of the session


def bio_rows(n: int = 24) -> list[dict]:
    """BIO-tagged sentences ({tokens, tags}), the way a hospital team feeds NER data."""
    rng = random.Random(0)
    drugs, diseases = ["aspirin", "metformin", "insulin"], [["asthma"], ["type", "2", "diabetes"], ["heart", "failure"]]
    rows = []
    for _ in range(n):
        drug, disease = rng.choice(drugs), rng.choice(diseases)
        rows.append({"tokens": ["patient", "with", *disease, "was", "given", drug],
                     "tags": ["O", "O", "B-DIS", *["I-DIS"] * (len(disease) - 1), "O", "O", "B-DRUG"]})
    return rows


def chat_model(folder: Path) -> str:
    """The tiny Llama with a chat template on its tokenizer: a stand-in for an instruction-tuned model."""
    from transformers import AutoTokenizer

    from medpeft.models import resolve_model

    if not (folder / "config.json").is_file():
        shutil.copytree(resolve_model("tiny-llama", online=False), folder, dirs_exist_ok=True)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        tokenizer.chat_template = CHAT_TEMPLATE
        tokenizer.save_pretrained(folder)
    return str(folder)


def local_model(folder: Path) -> str:
    """tiny-bert copied into a folder of its own: a local base, whose fingerprint the run records."""
    from medpeft.models import resolve_model

    if not (folder / "config.json").is_file():
        shutil.copytree(resolve_model("tiny-bert", online=False), folder, dirs_exist_ok=True)
    return str(folder)


def run_config(name: str, root: Path):
    grid, task, model, method, seed = RUNS[name]
    data = dict(DATA)
    if task == "ner":
        path = root / "ner-toy.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in bio_rows()))
        task, data = {"type": "ner", "path": str(path), "name": "ner-toy"}, {"max_source_tokens": 32}
    if model == "chat-llama":
        model = chat_model(root / "chat-llama")
    if model == "local-bert":
        model = local_model(root / "local-bert")
    train = dict(TRAIN) if method != "untrained" else {k: v for k, v in TRAIN.items() if k != "lr"}  # as a grid adds it
    train.update(PRECISIONS.get(name[-5:], {}))
    return config_from_dict({"task": task, "model": model, "method": method, "seed": seed, "data": data,
                             "train": train})


@pytest.fixture
def trained(tmp_path_factory, assets_ready):
    """get(name) -> (config, run_dir, result) of a finished tiny run; runs of one grid share its folder."""
    from helpers import run_config as run_planned

    def get(name: str):
        if name not in _CACHE:
            root = tmp_path_factory.getbasetemp() / "use-runs"
            root.mkdir(exist_ok=True)
            cfg = run_config(name, root)
            run_dir = root / RUNS[name][0] / cfg.run_id
            _CACHE[name] = cfg, run_dir, run_planned(cfg, run_dir)
        return _CACHE[name]

    return get


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def write_inputs(path: Path, predictions: list[dict], text_field: str = "text") -> Path:
    """A run's test inputs as an input file (CSV, TSV or JSONL by suffix), with their ids."""
    import csv

    if path.suffix in (".csv", ".tsv"):
        with open(path, "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["id", text_field], delimiter="\t" if path.suffix == ".tsv" else ",")
            writer.writeheader()
            writer.writerows({"id": p["id"], text_field: p["input"]} for p in predictions)
    else:
        path.write_text("".join(json.dumps({"id": p["id"], text_field: p["input"]}) + "\n" for p in predictions))
    return path


def refuse_models(monkeypatch) -> None:
    """Make `medpeft predict` fail loudly if it loads a model: for checks that must come before any model loads."""
    from medpeft.use import predict as predict_module

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the inputs, the output and the runs were checked")

    monkeypatch.setattr(predict_module, "load_adapters", refuse)
    monkeypatch.setattr(predict_module, "load_run_model", refuse)
