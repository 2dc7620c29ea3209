#!/usr/bin/env bash
# FineTune's `finetune bench` beside the peer (HF transformers + PEFT, ../shared/bench/hf_peft_bench.py) in one job on
# one GPU, then the ratio table. Runs on the GPU machine (python3 with torch, transformers, peft; no .NET needed):
#   tests/device/bench.sh <finetune single-file binary> <hf_peft_bench.py> <out dir> [shape:batch:seq:ckpt ...]
# ckpt: 1 (every layer recomputed), 0 (none), or auto (FineTune keeps what fits the free memory; the peer, which has
# no auto, runs that row with checkpointing on, and the table joins them as checkpointed rows).
# Default rows: issue 13's table (with qwen2.5-7b 1×16384) plus qwen3-0.6b 4×2048 without checkpointing.
set -uo pipefail
ft=$(realpath "$1"); peer=$2; out=$3; shift 3
rows=("$@")
[ ${#rows[@]} -gt 0 ] || rows=(qwen3-0.6b:1:2048:1 qwen3-0.6b:4:2048:1 qwen3-0.6b:4:2048:0 qwen2.5-0.5b:4:2048:1 qwen2.5-7b:1:2048:1 qwen2.5-7b:4:2048:1 llama3-8b:1:4096:1 qwen2.5-7b:1:8192:1 llama3-8b:2:4096:0 qwen2.5-7b:1:16384:1)
mkdir -p "$out"
: >"$out/finetune.jsonl"
for row in "${rows[@]}"; do
  IFS=: read -r shape batch seq ckpt <<<"$row"
  flag=(); [ "$ckpt" = 1 ] && flag=(--gradient-checkpointing); [ "$ckpt" = auto ] && flag=(--gradient-checkpointing auto)
  "$ft" bench --device cuda --shape "$shape" --batch "$batch" --seq "$seq" "${flag[@]}" --matmul-size 0 --profile \
    | grep '"train_step"' | tee -a "$out/finetune.jsonl"
done
PYTHONUNBUFFERED=1 python3 "$peer" "${rows[@]/%:auto/:1}" | tee "$out/peer.jsonl"
python3 "$(dirname "$0")/bench_table.py" "$out/finetune.jsonl" "$out/peer.jsonl" | tee "$out/table.md"
