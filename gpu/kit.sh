# Sourced by gpu/check.sh, gpu/measure.sh and gpu/check-fused.sh: the environment of a bare, offline GPU node.
# The ignored folder .gpu-carry/ travels with the source (the device tool's `carry`): wheels/ (medpeft's needs the
# node lacks, pure Python or cp312, ~19 MB), cache/ (a MEDPEFT_CACHE without weights: the MEDLINE cache, MiniLM's and
# SmolLM2-135M's configs and tokenizers, ~21 MB), make_random_weights.py.
# LOCAL=1: this machine's own packages and MEDPEFT_CACHE (dry runs of the scripts' logic on CPU).
KIT=$PWD/.gpu-carry
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false

kit_install() {  # the kit's wheels into /tmp/site, without their dependencies or an index
  [ "${LOCAL:-0}" = 1 ] && return 0
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$KIT"/wheels/*.whl
}

kit_env() {  # PYTHONPATH and a fresh, writable MEDPEFT_CACHE copied from the kit
  if [ "${LOCAL:-0}" = 1 ]; then
    export PYTHONPATH=$PWD/src
    return 0
  fi
  export PYTHONPATH=/tmp/site:$PWD/src
  rm -rf /tmp/medpeft-cache && cp -r "$KIT/cache" /tmp/medpeft-cache
  export MEDPEFT_CACHE=/tmp/medpeft-cache
}
