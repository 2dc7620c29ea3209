#!/usr/bin/env bash
set -u
t0=$(date +%s)
mkdir -p /tmp/ft && tar -xJf .device/s1/pub.tar.xz -C /tmp/ft && tar -xJf .device/overlay2.tar.xz -C /tmp/ft
FT=/tmp/ft
b() { # name timeout env... -- args
  local name=$1 to=$2; shift 2; local envs=(); while [ "$1" != -- ]; do envs+=("$1"); shift; done; shift
  local s=$(date +%s)
  env "${envs[@]}" timeout $to $FT/finetune bench --device cuda --matmul-size 0 --profile "$@" 2> $OUT/bench_$name.err | grep '"train_step"' > $OUT/bench_$name.jsonl
  echo "   ($name: $(( $(date +%s) - s )) s)"; tail -n 3 $OUT/bench_$name.err
  python3 -c "
import json
d=json.loads(open('$OUT/bench_$name.jsonl').read()); p=d.get('profile_ms') or {}
print('$name', d['shape'], d['batch'], d['seq'], d['tokens_per_s'], d['peak_gib'], d['mfu'], d['loss'], (d.get('attention') or {}).get('notes',[])[1:], sorted(p.items(), key=lambda kv:-kv[1])[:14])
" 2>&1 | tail -1
}
echo "== bench $(( $(date +%s) - t0 ))s"
b b7 100 X=1 -- --shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing
b b7_fp8 200 X=1 -- --shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing --fp8 --steps 6 --warmup 2
b b7_fp8_nofast 200 FINETUNE_FP8_FAST_ACCUM=0 -- --shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing --fp8 --steps 6 --warmup 2
echo "== models $(( $(date +%s) - t0 ))s"
DEVICECHECKS_MODELS=llama,gemma2,gemma3 timeout 100 $FT/FineTune.DeviceChecks models > $OUT/models.txt 2>&1; echo "rc=$?"
grep "FAIL" $OUT/models.txt | head -20; grep "cuDNN" $OUT/models.txt | head -12; grep "model checks" $OUT/models.txt
echo "== ops $(( $(date +%s) - t0 ))s"
timeout 170 $FT/FineTune.DeviceChecks ops > $OUT/ops.txt 2>&1; echo "rc=$?"
grep "FAIL" $OUT/ops.txt | head -20; grep -i "sequence slices\|B4 T2048 H32" $OUT/ops.txt | head -10; tail -2 $OUT/ops.txt
echo "== done $(( $(date +%s) - t0 ))s"
