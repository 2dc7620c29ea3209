#!/usr/bin/env bash
set -u
t0=$(date +%s)
mkdir -p /tmp/ft && tar -xJf .device/s1/pub.tar.xz -C /tmp/ft && tar -xJf .device/overlay4.tar.xz -C /tmp/ft
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
b l8_4k 100 X=1 -- --shape llama3-8b --batch 1 --seq 4096 --gradient-checkpointing
b b7_16k 150 X=1 -- --shape qwen2.5-7b --batch 1 --seq 16384 --gradient-checkpointing
export FINETUNE_KERNEL_CACHE=/tmp/kc
echo "== decode $(( $(date +%s) - t0 ))s"
timeout 300 bash tests/device/decode_gemv.sh $FT/finetune $FT/FineTune.DeviceChecks $OUT/dec /tmp/m17 /tmp/m8 > $OUT/decode_gemv.txt 2>&1; echo "rc=$?"
grep -E "FAIL|checks:|passed" $OUT/decode_gemv.txt | head -20; grep -E '"bench":"generate' $OUT/decode_gemv.txt | cut -c1-700
echo "== done $(( $(date +%s) - t0 ))s"
