#!/usr/bin/env bash
# FineTune's `finetune bench` beside the peers (HF transformers + PEFT, ../shared/bench/hf_peft_bench.py, and the same
# with Liger-Kernel's kernels, LIGER=1, as LLaMA-Factory's `enable_liger_kernel: true` gives) on one GPU, then the
# table issue 13 asks for. Runs on the GPU machine (python3 with torch, transformers, peft; no .NET needed):
#   [LIGER_SRC=<Liger-Kernel's src dir>] [BENCH_PARTS="finetune hf liger table"] \
#     tests/device/bench.sh <finetune single-file binary> <hf_peft_bench.py> <out dir> [shape:batch:seq:ckpt ...]
# ckpt: 1 (every layer recomputed), 0 (none), or auto (FineTune keeps what fits the free memory; the peers, which have
# no auto, run that row with checkpointing on, and the table joins them as checkpointed rows).
# Default rows: issue 13's table (with qwen2.5-7b 1×16384) plus qwen3-0.6b 4×2048 without checkpointing.
# Without LIGER_SRC the Liger peer is skipped. BENCH_PARTS runs only some parts (each part's lines land in <out dir>,
# so parts run in separate calls — the GPU machine's 10-minute limit — join in the last one's table).
set -uo pipefail
ft=$(realpath "$1"); peer=$2; out=$3; shift 3
rows=("$@")
[ ${#rows[@]} -gt 0 ] || rows=(qwen3-0.6b:1:2048:1 qwen3-0.6b:4:2048:1 qwen3-0.6b:4:2048:0 qwen2.5-0.5b:4:2048:1 qwen2.5-7b:1:2048:1 qwen2.5-7b:4:2048:1 llama3-8b:1:4096:1 qwen2.5-7b:1:8192:1 llama3-8b:2:4096:0 qwen2.5-7b:1:16384:1)
parts=${BENCH_PARTS:-finetune hf liger table}
has() { [[ " $parts " == *" $1 "* ]]; }
mkdir -p "$out"
if has finetune; then
  : >"$out/finetune.jsonl"
  for row in "${rows[@]}"; do
    IFS=: read -r shape batch seq ckpt <<<"$row"
    flag=(); [ "$ckpt" = 1 ] && flag=(--gradient-checkpointing); [ "$ckpt" = auto ] && flag=(--gradient-checkpointing auto)
    "$ft" bench --device cuda --shape "$shape" --batch "$batch" --seq "$seq" "${flag[@]}" --matmul-size 0 --profile \
      | grep '"train_step"' | tee -a "$out/finetune.jsonl"
  done
fi
has hf && PYTHONUNBUFFERED=1 python3 "$peer" "${rows[@]/%:auto/:1}" | tee "$out/peer.jsonl"
if has liger && [ -n "${LIGER_SRC:-}" ]; then
  LIGER=1 PYTHONPATH="$LIGER_SRC${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 python3 "$peer" "${rows[@]/%:auto/:1}" | tee "$out/peer_liger.jsonl"
fi
if has table; then
  liger=(); [ -s "$out/peer_liger.jsonl" ] && liger=("$out/peer_liger.jsonl")
  python3 "$(dirname "$0")/bench_table.py" "$out/finetune.jsonl" "$out/peer.jsonl" "${liger[@]}" | tee "$out/table.md"
fi
