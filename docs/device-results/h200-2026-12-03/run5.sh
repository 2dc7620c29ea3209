#!/usr/bin/env bash
set -u
t0=$(date +%s)
[ -x /tmp/ft/finetune ] || { mkdir -p /tmp/ft && tar -xJf .device/s1/pub.tar.xz -C /tmp/ft; }
FT=/tmp/ft
export FINETUNE_KERNEL_CACHE=/tmp/kc FINETUNE_SPLIT_RANK_ROWS=0
b() { # name timeout args
  local name=$1 to=$2; shift 2
  timeout $to $FT/finetune bench --device cuda --matmul-size 0 "$@" 2> $OUT/bench_$name.err | grep '"train_step"' > $OUT/bench_$name.jsonl
  python3 -c "
import json
d=json.loads(open('$OUT/bench_$name.jsonl').read())
print('$name', d['shape'], d['batch'], d['seq'], d['tokens_per_s'], d['peak_gib'], d['mfu'], d['loss'], d.get('fp8_scaling'))
" 2>&1 | tail -1
}
b f1 100 --shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing --fp8 --fp8-scaling delayed --steps 6 --warmup 2
b f2 100 --shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing --fp8 --fp8-scaling delayed --steps 6 --warmup 2
b c1 100 --shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing --fp8 --steps 6 --warmup 2
b b7 60 --shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing
echo "== models $(( $(date +%s) - t0 ))s"
DEVICECHECKS_MODELS=qwen2 timeout 120 $FT/FineTune.DeviceChecks models > $OUT/models.txt 2>&1; echo "rc=$?"
grep "FAIL" $OUT/models.txt | head; grep "model checks" $OUT/models.txt
echo "== done $(( $(date +%s) - t0 ))s"
