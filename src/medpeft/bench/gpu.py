"""`python -m medpeft.bench --gpu` (issue 28): the same work through medpeft and through a plain bf16
pipeline on a GPU, on random-weight models of named real shapes built from their configs alone (no
weights to download): a Llama with SmolLM2-1.7B's shape (1.71 B parameters, SmolLM2-135M's tokenizer)
and a T5 with Flan-T5-large's (780 M, the tiny models' WordPiece tokenizer). Speed and memory are
the real shapes'; the quality of random weights means nothing.

Workloads (the issue's): 512 MEDLINE conclusion examples (source <= 400 tokens, target <= 112), batch 8,
one epoch (64 steps), LoRA r16 alpha 32 on q,v, dropout 0.1, lr 3e-4; full fine-tuning of 256 examples
at lr 2e-5; the T5-large shape with LoRA against a plain `Seq2SeqTrainer`. The plain side is a bare
Trainer + peft with bf16=True over fp32 weights, every example padded to 512 (the studies'
padding="max_length"; T5's targets to 128), labels on every non-pad token. medpeft runs as a run does,
with its GPU levers (run/levers.py). Each side runs in its own process (cpu.py's structure).

Printed per workload: useful (non-pad) tokens/s, peak GPU memory allocated, generation new tokens/s
(before training, as cpu.py does), % of the bf16 matmul peak measured at the start (decoders: 4 FLOP
per parameter per useful token for LoRA, 6 for full fine-tuning), and medpeft/plain. `--ablate` runs
the LoRA workload through medpeft again with each lever off in turn (the opt-in ones on), one process
each, for before/after per lever. `--quick`: tiny shapes on CPU in well under a minute, so a test can
drive the whole harness; its figures mean nothing.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from medpeft.methods import Role, method_role
from medpeft.bench.cpu import (GIB, PLAIN_GENERATION_ROWS, Workload, count_tokens, matmul_peak, measure_medpeft, plain_prompt,
                               plain_rows, rate, training_peak_from_here)

LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.1}  # the issue's; q,v are medpeft's and peft's default targets
FLOP_PER_PARAM_TOKEN = {Role.PEFT: 4, Role.FULL: 6}  # by method role: forward 2 + input gradients 2 (+ weight gradients 2 when all train)
PLAIN_TARGET_LENGTH = 128  # the plain seq2seq pipeline pads targets to this many tokens
SIDE_TIMEOUT_S = 420  # one side's process; a hung side fails its row, not the whole benchmark
ABLATION_TIMEOUT_S = 150  # one ablation row (a LoRA run is ~30 s): compile or a hang may not eat the next rows' time


@dataclasses.dataclass(frozen=True)
class GpuWorkload(Workload):
    """A benchmark workload on a named model shape (SHAPES)."""

    method: str = "lora"
    seq2seq: bool = False


WORKLOADS = {w.name: w for w in (
    GpuWorkload("lora-1.7b", "pubmed-conclusion", "llama-1.7b", 512, 8, 64, 400, 512, max_target=112, test_size=64,
                max_new_tokens=64, lr=3e-4),
    GpuWorkload("full-1.7b", "pubmed-conclusion", "llama-1.7b", 256, 8, 32, 400, 512, max_target=112, test_size=0, lr=2e-5,
                method="full"),
    GpuWorkload("lora-t5-large", "pubmed-conclusion", "t5-large", 512, 8, 64, 400, 512, max_target=112, test_size=64,
                max_new_tokens=64, lr=3e-4, seq2seq=True))}
QUICK_WORKLOADS = {name: dataclasses.replace(w, model=w.model + "-tiny", train_size=8, batch_size=4, steps=2, max_source=32,
                                             max_length=96, max_target=16, test_size=4 if w.test_size else 0,
                                             max_new_tokens=8 if w.max_new_tokens else 0)
                   for name, w in WORKLOADS.items()}
ABLATED = "lora-1.7b"
# lever -> medpeft's train settings with it turned the other way (host_counts has no setting: patched in its process)
LEVERS = {"pad_to_multiple_of": {"pad_to_multiple_of": 1}, "bf16_base": {"bf16_base": False},
          "fused_optimizer": {"fused_optimizer": False}, "dataloader_workers": {"dataloader_workers": 0}, "host_counts": {},
          "packing (opt-in)": {"packing": True}, "compile (opt-in)": {"compile": True},
          "fused_kernels (opt-in)": {"fused_kernels": True}}
QUICK_CPU_LEVERS = {"pad_to_multiple_of": 64}  # --quick on CPU: the code path the GPU takes
NEEDS_CUDA = ("compile (opt-in)", "fused_kernels (opt-in)")  # Liger needs CUDA; inductor on CPU needs minutes and a compiler


# --- model shapes, from configs alone -----------------------------------------------------------


def shape_config(name: str):
    """(config, tokenizer) of a named shape; `-tiny` shapes are the same families, small."""
    from transformers import AutoConfig, AutoTokenizer, T5Config

    from medpeft.models import locate_smollm2, tiny_tokenizer

    if name.startswith("llama"):
        folder = locate_smollm2()  # its config and tokenizer (the GPU kit carries them without weights)
        config = AutoConfig.from_pretrained(folder)
        sizes = (64, 128, 2, 4) if name.endswith("tiny") else (2048, 8192, 24, 32)
        config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.num_attention_heads = sizes
        config.num_key_value_heads, config.head_dim, config.tie_word_embeddings = sizes[3], sizes[0] // sizes[3], True
        return config, AutoTokenizer.from_pretrained(folder)
    tokenizer = tiny_tokenizer()
    tokenizer.bos_token, tokenizer.eos_token = "[CLS]", "[SEP]"
    sizes = (64, 128, 2, 4, 16) if name.endswith("tiny") else (1024, 2816, 24, 16, 64)  # Flan-T5-large
    config = T5Config(vocab_size=32128, d_model=sizes[0], d_ff=sizes[1], num_layers=sizes[2], num_decoder_layers=sizes[2],
                      num_heads=sizes[3], d_kv=sizes[4], feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                      pad_token_id=0, eos_token_id=102, decoder_start_token_id=0)
    return config, tokenizer


def build_shape(name: str, folder: Path) -> Path:
    """A loadable model folder of shape `name` with random fp32 weights (seeded), built on the GPU if any."""
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    out = folder / name
    if (out / "config.json").is_file():
        return out
    config, tokenizer = shape_config(name)
    config.dtype = "float32"
    torch.manual_seed(0)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = auto.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    del model
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return out


# --- the two sides, each in its own process ------------------------------------------------------


def medpeft_config(w: GpuWorkload, model_path: str, train: dict):
    from medpeft.config import ExperimentConfig

    return ExperimentConfig(
        task=w.task, model=model_path, method=w.method, seed=0, method_args=dict(LORA) if w.method == "lora" else {},
        data={"train_size": w.train_size, "val_size": 0, "test_size": max(w.test_size, 1), "max_source_tokens": w.max_source,
              "max_target_tokens": w.max_target},
        train={"max_steps": w.steps, "batch_size": w.batch_size, "eval_batch_size": PLAIN_GENERATION_ROWS, "lr": w.lr, **train},
        generation={"max_new_tokens": w.max_new_tokens or None})


def measure_medpeft_gpu(w: GpuWorkload, model_path: str, workdir: Path, lever: str | None = None, quick: bool = False) -> dict:
    """medpeft's side through cpu.measure_medpeft; with `lever` (an ablation row), that lever turned the other way.
    `--quick` on CPU pads to 64 as CUDA does, so that the ablation runs that code path there too."""
    import torch

    from medpeft.dist import local_device, resolve_precision
    from medpeft.methods import METHODS
    from medpeft.run import fit
    from medpeft.run.kinds import KINDS

    base = QUICK_CPU_LEVERS if quick and not torch.cuda.is_available() else {}
    config = medpeft_config(w, model_path, {**base, **LEVERS.get(lever, {})})
    choose = fit.choose_levers
    if lever == "host_counts":  # no setting: the sync-free counting is what CUDA always gets
        fit.choose_levers = lambda *a: dataclasses.replace(choose(*a), host_counts=False)
    try:
        figures = measure_medpeft(w, workdir, config)
        train = dataclasses.replace(config.train, precision=resolve_precision(config.train.precision))  # what ran
        chosen = fit.choose_levers(local_device().type, KINDS["seq2seq" if w.seq2seq else "causal"], METHODS[w.method].peft_class,
                                   False, train)
    finally:
        fit.choose_levers = choose
    return {**figures, "levers": chosen.describe()}


def plain_model(w: GpuWorkload, path: str):
    """fp32 weights (bf16 comes from the Trainer's autocast); peft LoRA on its default q,v targets, or all weights."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

    model = (AutoModelForSeq2SeqLM if w.seq2seq else AutoModelForCausalLM).from_pretrained(path, dtype=torch.float32)
    if method_role(w.method) is Role.FULL:
        return model
    return get_peft_model(model, LoraConfig(task_type="SEQ_2_SEQ_LM" if w.seq2seq else "CAUSAL_LM", **LORA))


def plain_seq2seq_rows(w: GpuWorkload, data, tokenizer) -> list[dict]:
    """Instruction + source cut to max_source tokens (as medpeft cuts it) and padded to max_length; the summary
    padded to PLAIN_TARGET_LENGTH, -100 on its padding."""
    rows = []
    for ex in data.splits["train"]:
        enc = tokenizer(f"{data.instruction}\n\n{ex['text']}", truncation=True, max_length=w.max_source)
        source = padded(enc["input_ids"], enc["attention_mask"], w.max_length, tokenizer.pad_token_id)
        target = tokenizer(ex["target"], truncation=True, max_length=min(w.max_target, PLAIN_TARGET_LENGTH))
        ids, mask = padded(target["input_ids"], target["attention_mask"], PLAIN_TARGET_LENGTH, tokenizer.pad_token_id)
        rows.append({"input_ids": source[0], "attention_mask": source[1], "labels": [t if m else -100 for t, m in zip(ids, mask)]})
    return rows


def padded(ids: list[int], mask: list[int], length: int, pad_id: int) -> tuple[list[int], list[int]]:
    return ids + [pad_id] * (length - len(ids)), mask + [0] * (length - len(mask))


def plain_generation(model, tokenizer, data, w: GpuWorkload) -> tuple[int, float]:
    """Greedy generation of the test summaries, 8 per call: decoder prompts left-padded to max_length - max_target,
    encoder inputs right-padded to max_length."""
    import torch

    if w.seq2seq:
        prompts = [f"{data.instruction}\n\n{ex['text']}" for ex in data.splits["test"]]
    else:
        prompts = [plain_prompt(tokenizer, data.instruction, ex["text"], w.max_source) for ex in data.splits["test"]]
    tokenizer.padding_side = "right" if w.seq2seq else "left"
    length = w.max_length if w.seq2seq else w.max_length - w.max_target
    model.eval()
    new_tokens, start = 0, time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(prompts), PLAIN_GENERATION_ROWS):
            chunk = prompts[i : i + PLAIN_GENERATION_ROWS]
            if w.seq2seq:  # the source cut to max_source tokens, as in training, then padded
                cut = [tokenizer(text, truncation=True, max_length=w.max_source, return_token_type_ids=False) for text in chunk]
                enc = tokenizer.pad(cut, padding="max_length", max_length=length, return_tensors="pt").to(model.device)
            else:
                enc = tokenizer(chunk, padding="max_length", truncation=True, max_length=length, add_special_tokens=False,
                                return_token_type_ids=False, return_tensors="pt").to(model.device)
            out = model.generate(**enc, max_new_tokens=w.max_new_tokens, do_sample=False, num_beams=1, no_repeat_ngram_size=3,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            out = out if w.seq2seq else out[:, enc["input_ids"].shape[1]:]
            new_tokens += count_tokens(tokenizer, tokenizer.batch_decode(out, skip_special_tokens=True))
    tokenizer.padding_side = "right"
    return new_tokens, time.perf_counter() - start


def measure_plain_gpu(w: GpuWorkload, model_path: str, workdir: Path) -> dict:
    """The plain bf16 pipeline on the same examples (loaded by medpeft's task loader; nothing else of medpeft)."""
    import torch
    from datasets import Dataset
    from transformers import (AutoTokenizer, Seq2SeqTrainer, Seq2SeqTrainingArguments, Trainer, TrainingArguments,
                              default_data_collator)

    from medpeft.plan import plan_run
    from medpeft.run.measure import count_parameters, reset_peak_memory

    plan = plan_run(medpeft_config(w, model_path, {}))
    reset_peak_memory()
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    tokenizer.pad_token = tokenizer.pad_token or tokenizer.eos_token
    model = plain_model(w, model_path).to("cuda" if torch.cuda.is_available() else "cpu")
    figures = {"params": count_parameters(model)["total_params"]}
    if w.max_new_tokens:
        figures["new_tokens"], figures["generation_seconds"] = plain_generation(model, tokenizer, plan.data, w)
        figures["summaries"] = len(plan.data.splits["test"])
        figures.update(training_peak_from_here())
    rows = plain_seq2seq_rows(w, plan.data, tokenizer) if w.seq2seq else plain_rows(w, plan.data, tokenizer)
    args_cls, trainer_cls = (Seq2SeqTrainingArguments, Seq2SeqTrainer) if w.seq2seq else (TrainingArguments, Trainer)
    args = args_cls(output_dir=str(workdir), per_device_train_batch_size=w.batch_size, max_steps=w.steps, learning_rate=w.lr,
                    seed=0, bf16=torch.cuda.is_available(), use_cpu=not torch.cuda.is_available(), report_to="none",
                    save_strategy="no", logging_steps=w.steps, disable_tqdm=True, include_num_input_tokens_seen="non_padding")
    trainer = trainer_cls(model=model, args=args, train_dataset=Dataset.from_list(rows), data_collator=default_data_collator)
    start = time.perf_counter()
    trainer.train()
    return {**figures, "tokens": int(trainer.state.num_input_tokens_seen), "train_seconds": time.perf_counter() - start}


def run_gpu_side(side: str, workload: str, quick: bool, models_dir: Path, result: Path, lever: str | None) -> None:
    """One side of one workload in this process; its figures and peak memory as JSON."""
    import resource
    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    from medpeft.run.progress import showing

    hf_logging.set_verbosity_error()
    warnings.filterwarnings("ignore")
    w = (QUICK_WORKLOADS if quick else WORKLOADS)[workload]
    if lever is not None:
        w = ablation_workload(w, quick)
    path = str(models_dir / w.model)
    with tempfile.TemporaryDirectory() as tmp, showing("quiet"):
        figures = (measure_medpeft_gpu(w, path, Path(tmp), lever, quick) if side == "medpeft" else measure_plain_gpu(w, path, Path(tmp)))
    figures["peak_rss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if torch.cuda.is_available():
        figures["gpu_peak_bytes"] = int(torch.cuda.max_memory_allocated())
    result.write_text(json.dumps(figures))


# --- the parent -------------------------------------------------------------------------------------


def side_in_subprocess(side: str, w: GpuWorkload, quick: bool, models_dir: Path, lever: str | None = None,
                       timeout_s: int = SIDE_TIMEOUT_S) -> dict:
    """One side in a fresh process: its figures, or {"error": the output's tail} when it failed. `--quick` runs
    it in this process instead (a fresh interpreter costs more than a tiny run; its memory figures mean nothing)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory() as tmp:
        result = Path(tmp) / "figures.json"
        start = time.perf_counter()
        if quick:
            try:
                with contextlib.redirect_stdout(sys.stderr):  # the plain Trainer prints its logs
                    run_gpu_side(side, w.name, quick, models_dir, result, lever)
            except Exception:  # noqa: BLE001 (a failed side is a row of the report, as a failed process is)
                import traceback

                return {"error": traceback.format_exc()[-3000:]}
            return {**json.loads(result.read_text()), "process_seconds": time.perf_counter() - start}
        cmd = [sys.executable, "-m", "medpeft.bench", "--gpu", "--side", side, "--workload", w.name, "--models-dir",
               str(models_dir), "--result", str(result)] + (["--lever", lever] if lever else [])
        try:
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout_s} s"}
        if done.returncode != 0 or not result.is_file():
            return {"error": (done.stdout + done.stderr)[-3000:]}
        return {**json.loads(result.read_text()), "process_seconds": time.perf_counter() - start}


def save_report(report: dict, json_path: Path | None) -> None:
    if json_path:
        json_path.write_text(json.dumps(report, indent=1, default=str))


def memory(figures: dict) -> float:
    return figures.get("gpu_peak_bytes", figures.get("peak_rss_bytes", 0)) / GIB


def gpu_table(w: GpuWorkload, med: dict, plain: dict, peak: float) -> list[str]:
    """One workload's figures: a row per measure, a column per side, and medpeft/plain."""
    rows = [("useful tokens/s (non-pad, training)", rate(med, "tokens", "train_seconds"), rate(plain, "tokens", "train_seconds"), "{:,.0f}")]
    if not w.seq2seq:  # every weight of a decoder is a matmul's (the embedding is the tied LM head)
        flop = FLOP_PER_PARAM_TOKEN[method_role(w.method)]
        rows.append((f"% of matmul peak ({flop} FLOP/param/token)",
                     *(100 * flop * s["params"] * rate(s, "tokens", "train_seconds") / peak for s in (med, plain)), "{:.1f}"))
    if "gpu_peak_bytes" in med:
        rows.append(("peak GPU memory allocated, training (GiB)", memory(med), memory(plain), "{:.2f}"))
        if "generation_peak_bytes" in med and "generation_peak_bytes" in plain:
            rows.append(("peak GPU memory allocated, generation (GiB)", med["generation_peak_bytes"] / GIB,
                         plain["generation_peak_bytes"] / GIB, "{:.2f}"))
    else:
        rows.append(("peak RSS, whole process (GiB)", memory(med), memory(plain), "{:.2f}"))
    if w.max_new_tokens:
        rows.append((f"generation new tokens/s ({med['generation_rows']} vs {PLAIN_GENERATION_ROWS} per call)",
                     rate(med, "new_tokens", "generation_seconds"), rate(plain, "new_tokens", "generation_seconds"), "{:,.1f}"))
        rows.append((f"generation new tokens/s ({PLAIN_GENERATION_ROWS} per call on both)",
                     rate(med, "new_tokens_8", "generation_seconds_8"), rate(plain, "new_tokens", "generation_seconds"), "{:,.1f}"))
    rows += [("useful training tokens", med["tokens"], plain["tokens"], "{:,}"),
             ("training seconds", med["train_seconds"], plain["train_seconds"], "{:.1f}")]
    lines = [f"  {'':46}{'medpeft':>12}{'plain':>12}{'medpeft/plain':>15}"]
    for name, a, b, fmt in rows:
        lines.append(f"  {name:46}{fmt.format(a):>12}{fmt.format(b):>12}{(f'{a / b:.2f}x' if b else '-'):>15}")
    return lines


ABLATION_HEADER = f"  {'lever turned the other way':34}{'tokens/s':>12}{'peak GiB':>10}{'all on / this':>15}"


def ablation_line(name: str, figures: dict, base: dict) -> str:
    """One lever's row: medpeft's LoRA tokens/s and training peak memory with that lever turned, and how many
    times faster the run with every lever as chosen (`base`) was."""
    if "skipped" in figures:
        return f"  {name:34}  skipped: {figures['skipped']}"
    if "error" in figures:
        last = figures["error"].strip().splitlines()[-1][:120] if figures["error"].strip() else "?"
        return f"  {name:34}  FAILED: {last}"
    speed = rate(figures, "tokens", "train_seconds")
    ratio = rate(base, "tokens", "train_seconds") / speed if speed and "error" not in base else 0.0
    return f"  {name:34}{speed:>12,.0f}{memory(figures):>10.2f}{ratio:>14.2f}x"


def ablation_workload(w: GpuWorkload, quick: bool) -> GpuWorkload:
    """An ablation row's workload: half the LoRA workload (256 examples, 32 steps) for every row alike, no
    generation; a row's process start-up is the most of its time (the --quick one stays as it is)."""
    w = dataclasses.replace(w, max_new_tokens=0)
    return w if quick else dataclasses.replace(w, train_size=w.train_size // 2, steps=w.steps // 2)


def run_ablation(w: GpuWorkload, quick: bool, folder: Path, report: dict, json_path: Path | None) -> list[str]:
    """medpeft's LoRA with every lever as chosen, then with each turned the other way, one process each; each
    row printed as it finishes; -> the rows that failed."""
    import torch

    half = ablation_workload(w, quick)
    print(f"\nablation: {w.name} through medpeft, {half.train_size} examples, {half.steps} steps, training only, one lever "
          "turned the other way per process", flush=True)
    print(ABLATION_HEADER, flush=True)
    runs = report["ablation"] = {}
    for name in ["all levers as chosen", *LEVERS]:
        if name in NEEDS_CUDA and not torch.cuda.is_available():
            runs[name] = {"skipped": "needs a CUDA GPU"}
        else:
            runs[name] = side_in_subprocess("medpeft", w, quick, folder, "none" if name not in LEVERS else name, ABLATION_TIMEOUT_S)
        save_report(report, json_path)
        print(ablation_line(name, runs[name], runs["all levers as chosen"]), flush=True)
    return [f"ablation {name}" for name, figures in runs.items() if "error" in figures]


def benchmark_gpu(quick: bool, ablate: bool, models_dir: Path | None, json_path: Path | None, only: list[str] | None) -> int:
    """Print the environment, the bf16 matmul peak, each workload's table, then the ablation; -> 1 if any side failed."""
    import torch

    workloads = [w for name, w in (QUICK_WORKLOADS if quick else WORKLOADS).items() if not only or name in only]
    cuda = torch.cuda.is_available()
    print(f"medpeft GPU benchmark{' --quick (tiny shapes: the figures mean nothing)' if quick else ''}: torch {torch.__version__}, "
          + (torch.cuda.get_device_name() if cuda else f"no GPU ({os.cpu_count()} CPUs)"), flush=True)
    peak = matmul_peak(0.5 if quick else 5.0, 512 if quick else 8192, torch.bfloat16 if cuda else None)
    print(f"{'bf16' if cuda else 'fp32'} matmul peak: {peak / 1e12:.3f} TFLOP/s", flush=True)
    report, failed = {"device": torch.cuda.get_device_name() if cuda else "cpu", "matmul_peak_flops": peak, "workloads": {}}, []
    with tempfile.TemporaryDirectory() as tmp:
        folder = models_dir or Path(tmp)
        for shape in sorted({w.model for w in workloads}):
            start = time.perf_counter()
            build_shape(shape, folder)
            print(f"model {shape}: random weights in {folder / shape} ({time.perf_counter() - start:.0f} s)", flush=True)
        for w in workloads:
            sides = {side: side_in_subprocess(side, w, quick, folder) for side in ("medpeft", "plain")}
            report["workloads"][w.name] = sides
            save_report(report, json_path)  # after each workload: a run cut by a timeout keeps what it measured
            print(f"\n{w.name}: {w.model}, {w.method}, {w.train_size} {w.task} examples, batch {w.batch_size}, {w.steps} steps, "
                  f"source <= {w.max_source} + target <= {w.max_target} tokens; plain: bf16 autocast, pads to {w.max_length}")
            errors = [f"  {side} FAILED:\n{f['error']}" for side, f in sides.items() if "error" in f]
            failed += [w.name] if errors else []
            print("\n".join(errors or gpu_table(w, sides["medpeft"], sides["plain"], peak)), flush=True)
            if not errors:
                print(f"  medpeft's levers: {sides['medpeft']['levers']}")
        if ablate:
            w = (QUICK_WORKLOADS if quick else WORKLOADS)[ABLATED]
            build_shape(w.model, folder)
            failed += run_ablation(w, quick, folder, report, json_path)
    print("\ntargets (issue 28): LoRA >= 2x the plain pad-to-512 bf16 useful tokens/s at <= 0.5x its peak GPU memory, "
          ">= 30 % of the bf16 matmul peak; full fine-tuning >= 1.5x; T5-large-shape LoRA >= 1.5x")
    save_report(report, json_path)
    if failed:
        print(f"FAILED: {', '.join(failed)}")
    return 1 if failed else 0
