#!/usr/bin/env bash
# benchmarks/gpu_train.py on a lent GPU machine that reaches no package index (one call of at most 7 min).
#
#   here:            bash benchmarks/gpu_train_lent.sh prepare     # fills .gpu/ (ignored by git; carry it)
#   on the machine:  OUT=$OUT bash benchmarks/gpu_train_lent.sh run   (device tool: carry .gpu, timeout_s 450)
#   here, small:     SMOKE=1 PY=.venv/bin/python OUT=/tmp/g bash benchmarks/gpu_train_lent.sh run
#
# prepare: wheels for the machine's Python 3.12 of what its image lacks (pinned as constraints.txt
# and the GPU notes say, Liger-Kernel included; xxhash, which datasets imports, in case the image
# lacks it: an environment of only the image's listed packages did), the tokenizer files, GSM8K and Code
# Alpaca from the data folder. run: the wheels into /tmp/site, then gpu_train.py with its results in
# $OUT/gpu_train.json and its output in $OUT/log.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python3}
case "${1:-}" in
prepare)
  grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
  mkdir -p .gpu/whl .gpu/tok .gpu/data
  WHEELS="transformers==5.24.0 tokenizers==0.23.3 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
          fsspec==2026.9.0 pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
          typing_extensions==4.16.0 gguf==0.19.0 peft==0.21.2 liger-kernel==0.8.5 xxhash==4.1.0"
  for w in $WHEELS; do
    ${PIP:-.venv/bin/pip} download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .gpu/whl "$w"
  done
  # the path is the last line: converting the GGUF on a fresh machine can print library warnings first
  TOK=$(.venv/bin/python -c "from sftmix.models import resolve_model; print(resolve_model('smollm2'))" | tail -n 1)
  [ -f "$TOK/tokenizer.json" ] || { echo "prepare: no tokenizer.json in '$TOK'" >&2; exit 1; }
  cp "$TOK"/{tokenizer.json,tokenizer_config.json,config.json} .gpu/tok/
  [ -f "$TOK/chat_template.jinja" ] && cp "$TOK/chat_template.jinja" .gpu/tok/
  DATA=${DATA:-../shared/data}
  cp -r "$DATA/gsm8k" "$DATA/code_alpaca" .gpu/data/
  du -sh .gpu
  ;;
run)
  OUT=${OUT:-/tmp/gpu_train_out}; mkdir -p "$OUT"
  export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
  export SFTMIX_CACHE=/tmp/sftmix-cache
  if [ -z "${SMOKE:-}" ]; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl 2>&1 | tail -3
    export PYTHONPATH=/tmp/site:$PWD/src
    ARGS=(--tokenizer .gpu/tok --data .gpu/data --budget-s "${BUDGET:-270}" --path-limit-s 150)
  else
    ARGS=(--smoke --data "${DATA:-../shared/data}")
  fi
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null | tee "$OUT/log" || true
  rc=0
  timeout "${LIMIT:-420}" $PY benchmarks/gpu_train.py "${ARGS[@]}" --out "$OUT/gpu_train.json" 2>&1 \
    | grep -vE 'it/s\]|s/it\]|Warning' | tee -a "$OUT/log" || rc=$?
  # what was measured, cut short or not, as the README's table
  [ -f "$OUT/gpu_train.json" ] && $PY benchmarks/gpu_train.py --markdown "$OUT/gpu_train.json" | tee "$OUT/table.md"
  exit $rc
  ;;
*)
  echo "usage: bash benchmarks/gpu_train_lent.sh prepare|run" >&2; exit 2 ;;
esac
