#!/usr/bin/env bash
set -u
t0=$(date +%s)
mkdir -p /tmp/ft && tar -xJf .device/s1/pub.tar.xz -C /tmp/ft && tar -xJf .device/overlay3.tar.xz -C /tmp/ft
FT=/tmp/ft
mkdir -p /tmp/art && tar -xJf .device/art256.tar.xz -C /tmp/art
echo "== ops $(( $(date +%s) - t0 ))s"
timeout 150 $FT/FineTune.DeviceChecks ops > $OUT/ops.txt 2>&1; echo "rc=$?"
grep "FAIL" $OUT/ops.txt | head -20; grep "sliced\|info cuDNN\|info attention" $OUT/ops.txt | head -30; tail -2 $OUT/ops.txt
echo "== hf_equality $(( $(date +%s) - t0 ))s"
timeout 200 python3 tests/device/hf_equality.py /tmp/art/eq --json $OUT/hf_equality.json --finetune $FT/finetune > $OUT/hf_equality.txt 2>&1; echo "rc=$?"
tail -25 $OUT/hf_equality.txt
echo "== bench $(( $(date +%s) - t0 ))s"
: > $OUT/finetune.jsonl
for row in qwen3-0.6b:1:2048:1 qwen3-0.6b:4:2048:1 qwen3-0.6b:4:2048:0 qwen2.5-0.5b:4:2048:1 qwen2.5-7b:1:2048:1 qwen2.5-7b:4:2048:1 llama3-8b:1:4096:1 qwen2.5-7b:1:8192:1 llama3-8b:2:4096:0 qwen2.5-7b:1:16384:1; do
  IFS=: read -r shape batch seq ckpt <<<"$row"
  flag=(); [ "$ckpt" = 1 ] && flag=(--gradient-checkpointing)
  timeout 100 $FT/finetune bench --device cuda --shape "$shape" --batch "$batch" --seq "$seq" "${flag[@]}" --matmul-size 0 --profile | grep '"train_step"' >> $OUT/finetune.jsonl
  python3 -c "
import json
d=json.loads(open('$OUT/finetune.jsonl').readlines()[-1]); p=d.get('profile_ms') or {}
print(d['shape'], d['batch'], d['seq'], d['grad_ckpt'], d['tokens_per_s'], d['peak_gib'], d['mfu'], d['attention']['notes'][1:], sorted(p.items(), key=lambda kv:-kv[1])[:6])
" 2>&1 | tail -1
done
echo "== done $(( $(date +%s) - t0 ))s"
