#!/usr/bin/env bash
set -u
t0=$(date +%s)
mkdir -p /tmp/ft && [ -x /tmp/ft/finetune ] || tar -xJf .device/s1/pub.tar.xz -C /tmp/ft
FT=/tmp/ft
export FINETUNE_KERNEL_CACHE=/tmp/kc
b() { # name timeout env... -- args
  local name=$1 to=$2; shift 2; local envs=(); while [ "$1" != -- ]; do envs+=("$1"); shift; done; shift
  local s=$(date +%s)
  env "${envs[@]}" timeout $to $FT/finetune bench --device cuda --matmul-size 0 --profile "$@" 2> $OUT/bench_$name.err | grep '"train_step"' > $OUT/bench_$name.jsonl
  echo "   ($name: $(( $(date +%s) - s )) s)"; tail -n 3 $OUT/bench_$name.err
  python3 -c "
import json
d=json.loads(open('$OUT/bench_$name.jsonl').read()); p=d.get('profile_ms') or {}
print('$name', d['shape'], d['batch'], d['seq'], d['tokens_per_s'], d['peak_gib'], d['mfu'], d['loss'], d.get('fp8_scaling'), sorted(p.items(), key=lambda kv:-kv[1])[:12])
" 2>&1 | tail -1
}
echo "== fp8 checks $(( $(date +%s) - t0 ))s"
timeout 150 $FT/FineTune.DeviceChecks fp8 > $OUT/fp8.txt 2>&1; echo "rc=$?"
grep -E "FAIL|rror" $OUT/fp8.txt | head -20; grep -iE "delayed|current vs" $OUT/fp8.txt | head -30; tail -2 $OUT/fp8.txt
echo "== bench $(( $(date +%s) - t0 ))s"
b b7_fp8_delayed 150 X=1 -- --shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing --fp8 --fp8-scaling delayed --steps 6 --warmup 2
b b7_fp8 150 X=1 -- --shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing --fp8 --steps 6 --warmup 2
echo "== curve $(( $(date +%s) - t0 ))s"
timeout 150 bash tests/device/fp8_curve.sh $FT/finetune $OUT/curve 10 28 > $OUT/fp8_curve.txt 2>&1; echo "rc=$?"
tail -8 $OUT/fp8_curve.txt
echo "== done $(( $(date +%s) - t0 ))s"
