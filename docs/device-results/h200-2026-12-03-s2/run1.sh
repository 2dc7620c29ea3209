#!/usr/bin/env bash
# Session 2 of 2026-12-03, call 1: next.sh steps 1-3 (the fused-norm FP8 checks and A/B, the stale bf16 rows).
# publish of finetune + FineTune.DeviceChecks as .device/s1/pub.tar.xz (see run1.sh) and this script.
#   1. DeviceChecks fp8: the fused ln1/ln2 casts (FusedNorms rows, written without device time) against the device's
#      composition and the CPU, bit for bit; if they pass, make CausalLM.FusedFp8NormCasts default on.
#   2. The FP8 row with the norm fusion on and off in one job (and current scaling beside it).
#   3. The bf16 rows not re-measured since cross_entropy_v8 / rope_apply_v8.
#   4. (may need its own call) decode_gemv.sh with the per-kernel FINETUNE_DECODE_COLUMNS mixes.
set -u
t0=$(date +%s)
[ -x /tmp/ft/finetune ] || { mkdir -p /tmp/ft && tar -xJf .device/s1/pub.tar.xz -C /tmp/ft; }
FT=/tmp/ft
export FINETUNE_KERNEL_CACHE=/tmp/kc
timeout 150 $FT/FineTune.DeviceChecks fp8 > $OUT/fp8.txt 2>&1; echo "fp8 rc=$?"
grep -E "FAIL" $OUT/fp8.txt | head -20; grep -iE "norm" $OUT/fp8.txt | grep -v "^ok" | head; tail -1 $OUT/fp8.txt
b() { # name timeout env... -- args
  local name=$1 to=$2; shift 2; local envs=(); while [ "$1" != -- ]; do envs+=("$1"); shift; done; shift
  env "${envs[@]}" timeout $to $FT/finetune bench --device cuda --matmul-size 0 "$@" 2> $OUT/bench_$name.err | grep '"train_step"' > $OUT/bench_$name.jsonl
  python3 -c "
import json
d=json.loads(open('$OUT/bench_$name.jsonl').read())
print('$name', d['shape'], d['batch'], d['seq'], d['tokens_per_s'], d['peak_gib'], d['mfu'], d['loss'], d.get('fp8_scaling'))
" 2>&1 | tail -1
}
F8="--shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing --fp8 --steps 6 --warmup 2"
b fp8_delayed_norms 100 FINETUNE_FP8_FUSED_NORMS=1 -- $F8 --fp8-scaling delayed
b fp8_delayed 100 X=1 -- $F8 --fp8-scaling delayed
b fp8_current 100 X=1 -- $F8
b b7_4x2k 60 X=1 -- --shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing --steps 4 --warmup 2
b b7_1x2k 60 X=1 -- --shape qwen2.5-7b --batch 1 --seq 2048 --gradient-checkpointing --steps 4 --warmup 2
b b7_1x8k 60 X=1 -- --shape qwen2.5-7b --batch 1 --seq 8192 --gradient-checkpointing --steps 4 --warmup 2
b l8_1x4k 60 X=1 -- --shape llama3-8b --batch 1 --seq 4096 --gradient-checkpointing --steps 4 --warmup 2
b b7_1x16k 120 X=1 -- --shape qwen2.5-7b --batch 1 --seq 16384 --gradient-checkpointing --steps 3 --warmup 1
echo "== done $(( $(date +%s) - t0 ))s"
