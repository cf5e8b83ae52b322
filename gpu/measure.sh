#!/usr/bin/env bash
# Issue 28's GPU measurement in one device call (9-10 min estimated on one H200; the call's limit is 10): the kit's wheels,
# then `python -m medpeft.bench --gpu --ablate`: LoRA on the 1.7B Llama shape (medpeft against a plain pad-to-512
# bf16 Trainer), its full fine-tuning, LoRA on the Flan-T5-large shape against a plain Seq2SeqTrainer, and medpeft's
# LoRA again with each GPU lever turned the other way (one process each) for before/after per lever.
# Estimate (issue 28's figures): LoRA, 64 steps x 8 rows x ~350 useful tokens = ~180k tokens: medpeft before the
# levers at 11.5k tokens/s 16 s, the plain side (17k/s) 11 s; each process adds ~20 s (imports, the task, 6.8 GB of
# fp32 weights from the page cache) and the generations before training ~15 s: ~1.8 min for LoRA, ~1.1 for full
# fine-tuning (256 examples), ~1.3 for T5-large; the ablation's 9 rows train on half the LoRA workload (32 steps,
# ~25-30 s a process; torch.compile's row may take up to its 150 s cap): ~4-5 min; the wheels, the matmul peak and
# the random weights (1.7 B + 0.8 B parameters built on the GPU, saved once as fp32) ~1 min. About 9-10 min in all:
# the benchmark runs under LIMIT_S (510 s) so the call returns its logs; it prints each table and ablation row as it
# finishes and rewrites bench-gpu.json after each, so a cut run keeps what it measured, and the opt-in rows (packing,
# compile, Liger) come last. If it is cut, a second call measures the rest:
#   ARGS="--ablate --only ablation" bash gpu/measure.sh      (the ablation alone, ~5 min)
# $OUT: measure.log (everything), bench-gpu.txt (the tables), bench-gpu.json (every figure), versions.txt.
#   device:  bash gpu/measure.sh      (carry .gpu-carry)
#   dry run: LOCAL=1 PY=.venv/bin/python bash gpu/measure.sh   (CPU, tiny shapes: --quick)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-measure-out}
LIMIT_S=${LIMIT_S:-510}  # the benchmark's whole budget; the device call's limit is 600
mkdir -p "$OUT"
source gpu/kit.sh
ARGS=${ARGS:---ablate}
[ "${LOCAL:-0}" = 1 ] && ARGS="$ARGS --quick"
main() {
  kit_install || echo "FAIL install"
  kit_env
  "$PY" -c 'import importlib.metadata as m, torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "|", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU")
for n in ("transformers", "peft", "accelerate", "datasets", "liger-kernel", "triton"):
    try: print(n, m.version(n))
    except m.PackageNotFoundError: print(n, "MISSING")' | tee "$OUT/versions.txt"
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee -a "$OUT/versions.txt"
  local t0=$SECONDS
  timeout "$LIMIT_S" "$PY" -m medpeft.bench --gpu $ARGS --models-dir /tmp/medpeft-bench-models --json "$OUT/bench-gpu.json" \
    2>"$OUT/bench-gpu.err" | tee "$OUT/bench-gpu.txt"
  local rc=${PIPESTATUS[0]}
  tail -n 40 "$OUT/bench-gpu.err" | grep -v "^Loading\|^Writing" | tail -n 15
  echo "bench exit $rc after $((SECONDS - t0)) s (124: cut at LIMIT_S=$LIMIT_S); whole script ${SECONDS} s"
  return "$rc"
}
main 2>&1 | tee "$OUT/measure.log"
