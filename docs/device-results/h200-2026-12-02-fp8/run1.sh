#!/usr/bin/env bash
set -u
t0=$(date +%s)
mkdir -p /tmp/ft && tar -xJf .device/s1/pub.tar.xz -C /tmp/ft
FT=/tmp/ft
echo "== ops $(( $(date +%s) - t0 ))s"
timeout 170 $FT/FineTune.DeviceChecks ops > $OUT/ops.txt 2>&1; echo "rc=$?"
grep "FAIL" $OUT/ops.txt | head -20; grep -i "in place\|shape cap\|sequence slices\|info cuDNN" $OUT/ops.txt | head -30; tail -2 $OUT/ops.txt
echo "== bench $(( $(date +%s) - t0 ))s"
b() { # name env... -- args
  local name=$1; shift; local envs=(); while [ "$1" != -- ]; do envs+=("$1"); shift; done; shift
  env "${envs[@]}" timeout 110 $FT/finetune bench --device cuda --matmul-size 0 --profile "$@" | grep '"train_step"' > $OUT/bench_$name.jsonl
  python3 -c "
import json
d=json.loads(open('$OUT/bench_$name.jsonl').read()); p=d.get('profile_ms') or {}
print('$name', d['shape'], d['batch'], d['seq'], d['tokens_per_s'], d['peak_gib'], d['mfu'], d['loss'], (d.get('attention') or {}).get('notes',[])[1:], sorted(p.items(), key=lambda kv:-kv[1])[:12])
" 2>&1 | tail -1
}
b b7 X=1 -- --shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing
b b7_fp8 X=1 -- --shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing --fp8
b b7_fp8_nofast FINETUNE_FP8_FAST_ACCUM=0 -- --shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing --fp8
b b7_8k X=1 -- --shape qwen2.5-7b --batch 1 --seq 8192 --gradient-checkpointing
echo "== models $(( $(date +%s) - t0 ))s"
DEVICECHECKS_MODELS=llama,qwen3,gemma2 timeout 150 $FT/FineTune.DeviceChecks models > $OUT/models.txt 2>&1; echo "rc=$?"
grep "FAIL" $OUT/models.txt | head -20; grep "model checks" $OUT/models.txt
echo "== fp8 curve $(( $(date +%s) - t0 ))s"
timeout 120 bash tests/device/fp8_curve.sh $FT/finetune $OUT/fp8curve > $OUT/fp8_curve.txt 2>&1; echo "rc=$?"
tail -n 12 $OUT/fp8_curve.txt
echo "== done $(( $(date +%s) - t0 ))s"
