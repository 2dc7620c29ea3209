#!/usr/bin/env bash
set -u
t0=$(date +%s)
rm -rf /tmp/ft; mkdir -p /tmp/ft && tar -xJf .device/s1/pub.tar.xz -C /tmp/ft
FT=/tmp/ft
export FINETUNE_KERNEL_CACHE=/tmp/kc
b() { # name timeout env... -- args
  local name=$1 to=$2; shift 2; local envs=(); while [ "$1" != -- ]; do envs+=("$1"); shift; done; shift
  local s=$(date +%s)
  env "${envs[@]}" timeout $to $FT/finetune bench --device cuda --matmul-size 0 --profile "$@" 2> $OUT/bench_$name.err | grep '"train_step"' > $OUT/bench_$name.jsonl
  echo "   ($name: $(( $(date +%s) - s )) s)"; tail -n 2 $OUT/bench_$name.err
  python3 -c "
import json
d=json.loads(open('$OUT/bench_$name.jsonl').read()); p=d.get('profile_ms') or {}
print('$name', d['shape'], d['batch'], d['seq'], d['tokens_per_s'], d['peak_gib'], d['mfu'], d['loss'], d.get('fp8_scaling'), sorted(p.items(), key=lambda kv:-kv[1])[:14])
" 2>&1 | tail -1
}
echo "== bench $(( $(date +%s) - t0 ))s"
b b7_fp8_delayed 150 X=1 -- --shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing --fp8 --fp8-scaling delayed --steps 6 --warmup 2
b b7_fp8_delayed_unfused 150 FINETUNE_FP8_FUSED_CASTS=0 -- --shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing --fp8 --fp8-scaling delayed --steps 6 --warmup 2
b b7_fp8_delayed_nosplit 150 FINETUNE_SPLIT_RANK_ROWS=0 -- --shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing --fp8 --fp8-scaling delayed --steps 6 --warmup 2
b b7 150 X=1 -- --shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing
echo "== lora $(( $(date +%s) - t0 ))s"
timeout 60 $FT/FineTune.DeviceChecks lora 2>&1 | tee $OUT/lora.txt | grep -E "lora (q/k/v|xaT|:)"
echo "== fp8 $(( $(date +%s) - t0 ))s"
timeout 150 $FT/FineTune.DeviceChecks fp8 > $OUT/fp8.txt 2>&1; echo "rc=$?"
grep -E "FAIL|rror" $OUT/fp8.txt | head -20; grep -iE "fused|swiglu" $OUT/fp8.txt | head -30; tail -1 $OUT/fp8.txt
echo "== ops $(( $(date +%s) - t0 ))s"
timeout 240 $FT/FineTune.DeviceChecks ops > $OUT/ops.txt 2>&1; echo "rc=$?"
grep "FAIL" $OUT/ops.txt | head -20; grep -E "rope_apply_v8|^     (rope|cross_entropy)|op checks|allocator" $OUT/ops.txt | head -20; tail -2 $OUT/ops.txt
echo "== done $(( $(date +%s) - t0 ))s"
