#!/usr/bin/env bash
set -u
t0=$(date +%s)
mkdir -p /tmp/ft && tar -xJf .device/s1/pub.tar.xz -C /tmp/ft && tar -xJf .device/overlay5.tar.xz -C /tmp/ft
FT=/tmp/ft
echo "== flash $(( $(date +%s) - t0 ))s"
timeout 120 $FT/FineTune.DeviceChecks flash > $OUT/flash.txt 2>&1; echo "rc=$?"
grep "FAIL" $OUT/flash.txt | head -20; grep "sliced\|info cuDNN" $OUT/flash.txt | head -30; tail -1 $OUT/flash.txt
echo "== models $(( $(date +%s) - t0 ))s"
DEVICECHECKS_MODELS=llama,qwen2 timeout 120 $FT/FineTune.DeviceChecks models > $OUT/models.txt 2>&1; echo "rc=$?"
grep "FAIL" $OUT/models.txt | head -20; grep "unpacked" $OUT/models.txt | grep -v "info" | head -30; grep "model checks" $OUT/models.txt
echo "== bench $(( $(date +%s) - t0 ))s"
timeout 100 $FT/finetune bench --device cuda --shape qwen2.5-7b --batch 1 --seq 16384 --gradient-checkpointing --matmul-size 0 --profile | grep '"train_step"' > $OUT/ft16k.jsonl
python3 -c "
import json
d=json.loads(open('$OUT/ft16k.jsonl').read()); p=d.get('profile_ms') or {}
print(d['tokens_per_s'], d['peak_gib'], d['mfu'], d['attention']['notes'][1:], sorted(p.items(), key=lambda kv:-kv[1])[:6])
"
echo "== done $(( $(date +%s) - t0 ))s"
