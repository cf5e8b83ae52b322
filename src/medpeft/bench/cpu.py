"""`python -m medpeft.bench` (`make bench`) on CPU: the same work through medpeft and through a plain
pipeline written the way the studies' code does it, in one invocation, with the figures of issue 12.

Summarization: SmolLM2-135M, LoRA r16 on q,v, 64 MEDLINE conclusion examples, batch 8, 8 steps.
medpeft trains through its own run (plan -> run_experiment -> fit.train_model: dynamic padding,
loss on the summary only); the plain pipeline pads every example to 512 tokens with
`tokenizer(..., padding="max_length")`, labels every non-pad token and trains with a bare `Trainer`.
Classification: MiniLM-L6 on PubMed-RCT sentence roles, dynamic padding against pad-to-max.

Precision: medpeft trains in what `train.precision: auto` gives here (bf16 mixed precision with the
frozen base held in bf16 on a CPU that multiplies bf16 natively, else fp32), the plain pipeline in fp32,
the Trainer's default and the studies' setting; `--precision` and `--plain-precision` set either side, so
one invocation can also compare like with like.

Each side runs in its own process, so its peak resident memory is its own. Printed: useful (non-pad)
tokens/s, peak RSS, new tokens/s of batched evaluation generation, the ratios medpeft/plain, and each
side's share of the matmul peak of its own precision, measured here at the start (LoRA: about 4 FLOP per
parameter per token, 2 forward and 2 for the input gradients; the frozen weights get none). `--quick`: tiny random models,
seconds, for tests; its figures mean nothing. `--gpu`: the GPU benchmark of issue 28 (bench/gpu.py).

Generation runs before training, with the LoRA adapter as initialised (B = 0: the base model's
outputs), so both sides decode the same summaries and tokens/s compares pipelines, not the lengths
two differently trained models happen to write (a short summary is mostly prompt prefill). The plain
pipeline decodes 8 summaries per generate() call; medpeft decodes as many as its evaluation does
(`run/predict.generation_rows`: on CPU up to 64 while their cache fits), and once more 8 at a time, to
show what the rows per call are worth.
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from medpeft.dist import resolve_precision

LORA_FLOP_PER_PARAM_TOKEN = 4  # forward 2 + input gradients 2; no weight gradients for the frozen base
SIDES = ("medpeft", "plain")
PLAIN_GENERATION_ROWS = 8  # summaries per generate() call in the plain pipeline (and medpeft's eval_batch_size here)
GIB = 2**30


@dataclass(frozen=True)
class Workload:
    """One benchmark workload: a LoRA run medpeft and the plain pipeline both do."""

    name: str
    task: str
    model: str
    train_size: int  # training examples: batch_size x steps, one pass
    batch_size: int
    steps: int
    max_source: int  # data.max_source_tokens
    max_length: int  # the plain pipeline pads every training example to this many tokens
    max_target: int = 0  # data.max_target_tokens (summarization): max_source + prompt frame + max_target <= max_length
    test_size: int = 16  # examples evaluated (summarization: generated; the plain pipeline 8 per call)
    max_new_tokens: int = 0  # generation budget per summary
    lr: float = 1e-3

    @property
    def generates(self) -> bool:
        """The summarization workload: a decoder writes a target (classification has none)."""
        return self.max_target > 0


def by_name(*workloads: Workload) -> dict[str, Workload]:
    return {w.name: w for w in workloads}


FULL = by_name(Workload("summarization", "pubmed-conclusion", "smollm2-135m", 64, 8, 8, 320, 512,
                                  max_target=128, test_size=32, max_new_tokens=64),
        Workload("classification", "pubmed-rct", "minilm-l6", 768, 32, 24, 128, 128, test_size=64))
QUICK = by_name(Workload("summarization", "pubmed-conclusion", "tiny-llama", 8, 4, 2, 32, 96,
                                   max_target=16, test_size=4, max_new_tokens=8),
         Workload("classification", "pubmed-rct", "tiny-bert", 8, 4, 2, 32, 32, test_size=4))


def experiment_config(w: Workload, precision: str = "auto"):
    """medpeft's config of the workload: LoRA with its defaults (r=16, alpha=32, q,v), no validation."""
    from medpeft.config import ExperimentConfig

    return ExperimentConfig(
        task=w.task, model=w.model, method="lora", seed=0,
        data={"train_size": w.train_size, "val_size": 0, "test_size": w.test_size, "max_source_tokens": w.max_source,
              "max_target_tokens": max(w.max_target, 1)},
        train={"max_steps": w.steps, "batch_size": w.batch_size, "eval_batch_size": PLAIN_GENERATION_ROWS, "lr": w.lr,
               "precision": precision},
        generation={"max_new_tokens": w.max_new_tokens or None})


# --- the two sides, each in its own process --------------------------------------------------


def count_tokens(tokenizer, texts: list[str]) -> int:
    """Tokens of generated texts, re-tokenized (both sides count the same way; end tokens excluded)."""
    return sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)


def measure_medpeft(w: Workload, workdir: Path, config=None) -> dict:
    """medpeft's path, through the helpers its run uses: plan, prepare_model, encode_examples,
    train_model (dynamic padding, loss on the summary only), the kind's batched generation (when the
    workload generates). `config`: another ExperimentConfig of the workload (the GPU benchmark's)."""
    from transformers import set_seed

    from medpeft.dist import local_device
    from medpeft.plan import plan_run
    from medpeft.run.encode import encode_examples
    from medpeft.run.execute import prepare_model
    from medpeft.run.fit import train_model
    from medpeft.run.kinds import KINDS, decoding, generation_batch
    from medpeft.run.measure import count_parameters, reset_peak_memory
    from medpeft.run.predict import generate_texts

    plan = plan_run(config or experiment_config(w))
    cfg, kind, data = plan.config, KINDS[plan.kind], plan.data
    reset_peak_memory()  # as run_experiment does at its start
    set_seed(cfg.seed)
    model, tokenizer, _, _ = prepare_model(plan, kind)
    figures = {"params": count_parameters(model)["total_params"]}
    if w.max_new_tokens:  # before training: see the module's doc
        test = data.splits["test"]
        prompts, _ = encode_examples(test, tokenizer, kind, data.instruction, cfg.data, data.labels, for_generation=True)
        start = time.perf_counter()
        texts = kind.predict(model, tokenizer, prompts, test, data.labels, cfg, local_device())
        figures.update(new_tokens=count_tokens(tokenizer, texts), generation_seconds=time.perf_counter() - start,
                       summaries=len(texts), generation_rows=generation_batch(model, prompts, cfg, local_device()))
        start = time.perf_counter()  # the same summaries, 8 per call as the plain pipeline decodes them
        texts_8 = generate_texts(model, tokenizer, prompts, not kind.seq2seq_trainer, decoding(cfg), PLAIN_GENERATION_ROWS,
                                 local_device())
        figures.update(new_tokens_8=count_tokens(tokenizer, texts_8), generation_seconds_8=time.perf_counter() - start,
                       differing_summaries=sum(a != b for a, b in zip(texts_8, texts)))
    figures.update(training_peak_from_here())
    rows, _ = encode_examples(data.splits["train"], tokenizer, kind, data.instruction, cfg.data, data.labels)
    training = train_model(model, tokenizer, kind, cfg, rows, [], workdir)
    return {**figures, "tokens": training["train_tokens"], "train_seconds": training["train_seconds"]}


def training_peak_from_here() -> dict:
    """On a GPU: the peak allocated so far (loading and generation) as `generation_peak_bytes`, and a fresh
    peak for training, so the process's final peak is training's (the issue's memory figure). On CPU nothing:
    the peak RSS stays the whole process's."""
    import torch

    if not torch.cuda.is_available():
        return {}
    peak = int(torch.cuda.max_memory_allocated())
    torch.cuda.reset_peak_memory_stats()
    return {"generation_peak_bytes": peak}


def cut(tokenizer, text: str, max_tokens: int) -> str:
    return tokenizer.decode(tokenizer(text, add_special_tokens=False)["input_ids"][:max_tokens])


def plain_prompt(tokenizer, instruction: str, text: str, max_source: int) -> str:
    """The studies' way: the source cut to max_source tokens, then the chat template (or an answer cue)."""
    user = f"{instruction}\n\n{cut(tokenizer, text, max_source)}"
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False)
    return f"{user}\n\nAnswer:"


def plain_rows(w: Workload, data, tokenizer) -> list[dict]:
    """Every training example padded to max_length; labels -100 on padding only. The summary is cut to
    max_target tokens with its end token, as medpeft cuts it, so both sides see the same text."""
    rows = []
    for ex in data.splits["train"]:
        if w.max_target:  # a summary after the prompt
            target = cut(tokenizer, ex["target"], w.max_target - 1) + tokenizer.eos_token
            text = plain_prompt(tokenizer, data.instruction, ex["text"], w.max_source) + target
            enc = tokenizer(text, padding="max_length", truncation=True, max_length=w.max_length, add_special_tokens=False)
            labels = [t if m else -100 for t, m in zip(enc["input_ids"], enc["attention_mask"])]
        else:
            enc = tokenizer(ex["text"], padding="max_length", truncation=True, max_length=w.max_length)
            labels = data.labels.index(ex["target"])
        rows.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels})
    return rows


def plain_model(w: Workload, path: str, labels):
    """The base model in fp32 with a peft LoRA adapter (r=16, alpha=32, dropout 0.05, peft's q,v targets)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if w.generates:
        model, task_type = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32), "CAUSAL_LM"
    else:
        model, task_type = AutoModelForSequenceClassification.from_pretrained(path, num_labels=len(labels), dtype=torch.float32), "SEQ_CLS"
    return get_peft_model(model, LoraConfig(task_type=task_type, r=16, lora_alpha=32, lora_dropout=0.05))


def plain_generate(model, tokenizer, data, w: Workload) -> tuple[int, float]:
    """Batched greedy generation of the test summaries, 8 per call, prompts left-padded to max_length - max_target."""
    import torch

    prompts = [plain_prompt(tokenizer, data.instruction, ex["text"], w.max_source) for ex in data.splits["test"]]
    tokenizer.padding_side = "left"
    batches = [tokenizer(prompts[i : i + PLAIN_GENERATION_ROWS], padding="max_length", truncation=True, max_length=w.max_length - w.max_target,
                         add_special_tokens=False, return_token_type_ids=False, return_tensors="pt").to(model.device)
               for i in range(0, len(prompts), PLAIN_GENERATION_ROWS)]
    tokenizer.padding_side = "right"  # training pads on the right
    model.eval()
    new_tokens, start = 0, time.perf_counter()
    with torch.no_grad():
        for enc in batches:
            out = model.generate(**enc, max_new_tokens=w.max_new_tokens, do_sample=False, num_beams=1, no_repeat_ngram_size=3,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new_tokens += count_tokens(tokenizer, tokenizer.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    return new_tokens, time.perf_counter() - start


def measure_plain(w: Workload, workdir: Path, precision: str = "fp32") -> dict:
    """The plain pipeline on the same examples (loaded by medpeft's task loader; nothing else of medpeft), in
    fp32 or with the Trainer's `bf16=True` (mixed precision: the weights stay fp32)."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, Trainer, TrainingArguments, default_data_collator

    from medpeft.plan import plan_run
    from medpeft.run.measure import count_parameters, reset_peak_memory

    plan = plan_run(experiment_config(w))
    reset_peak_memory()  # where medpeft's run resets it: the same starting point
    tokenizer = AutoTokenizer.from_pretrained(plan.model_path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = plain_model(w, plan.model_path, plan.data.labels)
    figures = {"params": count_parameters(model)["total_params"]}
    if w.generates:  # before training, as on medpeft's side
        figures["new_tokens"], figures["generation_seconds"] = plain_generate(model, tokenizer, plan.data, w)
        figures["summaries"] = len(plan.data.splits["test"])
    args = TrainingArguments(output_dir=str(workdir), per_device_train_batch_size=w.batch_size, max_steps=w.steps,
                             learning_rate=w.lr, seed=0, use_cpu=not torch.cuda.is_available(), report_to="none",
                             save_strategy="no", logging_steps=w.steps, disable_tqdm=True, bf16=precision == "bf16",
                             include_num_input_tokens_seen="non_padding")
    trainer = Trainer(model=model, args=args, train_dataset=Dataset.from_list(plain_rows(w, plan.data, tokenizer)),
                      data_collator=default_data_collator)
    start = time.perf_counter()
    trainer.train()
    return {**figures, "tokens": int(trainer.state.num_input_tokens_seen), "train_seconds": time.perf_counter() - start}


def run_side(side: str, w: Workload, result_path: Path, precision: str) -> None:
    """One side of one workload at `precision` (auto, fp32, bf16), in this process; its figures (and
    whole-process peak RSS) as JSON."""
    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    from medpeft.run.progress import showing

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    with tempfile.TemporaryDirectory() as tmp, showing("quiet"):
        if side == "medpeft":
            figures = measure_medpeft(w, Path(tmp), experiment_config(w, precision))
        else:
            figures = measure_plain(w, Path(tmp), resolve_precision(precision))
    figures["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    if torch.cuda.is_available():
        figures["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    result_path.write_text(json.dumps(figures))


# --- the parent: matmul peak, both sides of each workload, the table --------------------------


def matmul_peak(seconds: float, n: int, dtype=None) -> float:
    """Matmul FLOP/s (fp32 unless `dtype`) on this machine's training device: the best of repeated n x n products."""
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    out = torch.mm(a, b)  # warm-up
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b, out=out)
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 4 * 2 * n**3 / (time.perf_counter() - start))
    return best


def measure_in_subprocess(side: str, w: Workload, quick: bool, precision: str) -> dict:
    """Run one side in a fresh Python process; its figures. A failed side ends the benchmark with its output."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "figures.json"
        cmd = [sys.executable, "-m", "medpeft.bench", "--side", side, "--workload", w.name, "--result", str(result),
               "--precision", precision]
        done = subprocess.run(cmd + (["--quick"] if quick else []), env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"medpeft.bench: the {side} side of {w.name} failed:\n{(done.stdout + done.stderr)[-4000:]}")
        return json.loads(result.read_text())


def rate(figures: dict, key: str, seconds: str) -> float:
    return figures[key] / figures[seconds] if figures.get(seconds) else 0.0


def table_lines(w: Workload, sides: dict, peaks: dict[str, float]) -> list[str]:
    """The workload's figures: a row per measure, a column per side, and medpeft/plain. `peaks`: the matmul
    FLOP/s of each side's precision (by side); a side's share is of its own precision's peak."""
    med, plain = sides["medpeft"], sides["plain"]
    rows = [("useful tokens/s (non-pad, training)", rate(med, "tokens", "train_seconds"), rate(plain, "tokens", "train_seconds"), "{:.1f}")]
    if w.generates:  # every weight is a matmul's (the embedding is the tied LM head); not so in an encoder
        rows.append(("% of its precision's matmul peak (4 FLOP/param/token)",
                     *(100 * LORA_FLOP_PER_PARAM_TOKEN * sides[side]["params"] * rate(sides[side], "tokens", "train_seconds") / peaks[side]
                       for side in SIDES), "{:.1f}"))
    rows.append(("peak RSS, whole process (GiB)", med["peak_rss_bytes"] / GIB, plain["peak_rss_bytes"] / GIB, "{:.2f}"))
    if "gpu_peak_bytes" in med:
        rows.append(("peak GPU memory allocated (GiB)", med["gpu_peak_bytes"] / GIB, plain["gpu_peak_bytes"] / GIB, "{:.2f}"))
    if "new_tokens" in med:
        rows.append((f"generation new tokens/s ({med['generation_rows']} vs {PLAIN_GENERATION_ROWS} per call)",
                     rate(med, "new_tokens", "generation_seconds"), rate(plain, "new_tokens", "generation_seconds"), "{:.1f}"))
        rows.append((f"generation new tokens/s ({PLAIN_GENERATION_ROWS} per call on both)",
                     rate(med, "new_tokens_8", "generation_seconds_8"), rate(plain, "new_tokens", "generation_seconds"), "{:.1f}"))
        rows.append(("generated tokens per summary", rate(med, "new_tokens", "summaries"), rate(plain, "new_tokens", "summaries"), "{:.1f}"))
    rows += [("useful training tokens", med["tokens"], plain["tokens"], "{:,}"),
             ("training seconds", med["train_seconds"], plain["train_seconds"], "{:.1f}")]
    lines = [f"  {'':42}{'medpeft':>10}{'plain':>10}{'medpeft/plain':>15}"]
    for name, a, b, fmt in rows:
        ratio = f"{a / b:.2f}x" if b else "-"
        lines.append(f"  {name:42}{fmt.format(a):>10}{fmt.format(b):>10}{ratio:>15}")
    if "differing_summaries" in med:  # fp32 decodes the same summaries whatever the rows per call; bf16 rounds by the batch
        differ = med["differing_summaries"]
        lines.append(f"  medpeft's summaries at {med['generation_rows']} and at {PLAIN_GENERATION_ROWS} rows per call: "
                     + (f"{differ} of {med['summaries']} differ" if differ else "identical"))
    return lines


def describe(w: Workload, precisions: dict[str, str]) -> str:
    """The workload in a line; `precisions`: each side's, as asked (auto: medpeft's default here)."""
    med, plain = (resolve_precision(precisions[side]) + (" (its default here)" if precisions[side] == "auto" else "") for side in SIDES)
    precision = f"both {med}" if med == plain else f"medpeft {med}, plain {plain}"
    size = (f"max source {w.max_source} + target {w.max_target} tokens, plain pads to {w.max_length}" if w.generates
            else f"max {w.max_source} tokens, plain pads to {w.max_length}")
    return (f"{w.name}: {w.model}, LoRA r16 on q,v, {w.train_size} {w.task} examples, batch {w.batch_size}, {w.steps} steps, "
            f"{precision}, {size}")


TARGETS = ("targets (issue 12): summarization >= 2x useful tokens/s, <= 0.5x peak RSS, >= 60 % of matmul peak, "
           "generation clearly faster; classification >= 3x useful tokens/s")


def benchmark(quick: bool, precisions: dict[str, str] | None = None) -> None:
    """Print the environment, the matmul peaks, then each workload's table (stdout); progress on stderr.
    `precisions`: each side's (auto, fp32, bf16); by default medpeft's auto against the plain pipeline's fp32."""
    import torch

    from medpeft.use.export import torch_dtype

    workloads = QUICK if quick else FULL
    print(f"medpeft benchmark{' --quick (tiny random models: the figures mean nothing)' if quick else ''}: "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs"
          + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""), flush=True)
    precisions = precisions or {"medpeft": "auto", "plain": "fp32"}
    peaks = {}
    for name in sorted({resolve_precision(p) for p in precisions.values()}, reverse=True):  # fp32 first
        peaks[name] = matmul_peak(0.5 if quick else 5.0, 512 if quick else 2048, torch_dtype(name))
        print(f"{name} matmul peak: {peaks[name] / 1e9:.1f} GFLOP/s", flush=True)
    for w in workloads.values():
        sides = {}
        for side in SIDES:
            print(f"medpeft.bench: {w.name} through {side} ...", file=sys.stderr, flush=True)
            sides[side] = measure_in_subprocess(side, w, quick, precisions[side])
        print(f"\n{describe(w, precisions)}")
        print("\n".join(table_lines(w, sides, {side: peaks[resolve_precision(precisions[side])] for side in SIDES})), flush=True)
    print(f"\n{TARGETS}")
