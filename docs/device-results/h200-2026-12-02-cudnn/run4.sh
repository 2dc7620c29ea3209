#!/usr/bin/env bash
set -u
t0=$(date +%s)
mkdir -p /tmp/ft && tar -xJf .device/s1/pub.tar.xz -C /tmp/ft && tar -xJf .device/overlay3.tar.xz -C /tmp/ft
FT=/tmp/ft
mkdir -p /tmp/lg && tar -xJf .device/liger.tar.xz -C /tmp/lg
echo "== finetune 16k $(( $(date +%s) - t0 ))s"
for env in "FINETUNE_CUDNN_WORKSPACE_MIB=4096" "FINETUNE_ATTENTION=cudnn-fast"; do
  env $env timeout 100 $FT/finetune bench --device cuda --shape qwen2.5-7b --batch 1 --seq 16384 --gradient-checkpointing --matmul-size 0 --profile | grep '"train_step"' > $OUT/ft16k_${env%%=*}.jsonl
  python3 -c "
import json
d=json.loads(open('$OUT/ft16k_${env%%=*}.jsonl').read()); p=d.get('profile_ms') or {}
print('$env', d['tokens_per_s'], d['peak_gib'], d['mfu'], d['attention']['notes'][1:], sorted(p.items(), key=lambda kv:-kv[1])[:5])
"
done
echo "== hf $(( $(date +%s) - t0 ))s"
PYTHONUNBUFFERED=1 timeout 200 python3 .device/hf_peft_bench.py qwen2.5-7b:1:16384:1 > $OUT/peer_hf.jsonl 2>$OUT/peer_hf.err; echo "rc=$?"; tail -1 $OUT/peer_hf.jsonl; tail -2 $OUT/peer_hf.err | cut -c1-300
echo "== liger $(( $(date +%s) - t0 ))s"
LIGER=1 PYTHONPATH=/tmp/lg/liger/src PYTHONUNBUFFERED=1 timeout 200 python3 .device/hf_peft_bench.py qwen2.5-7b:1:16384:1 > $OUT/peer_liger.jsonl 2>$OUT/peer_liger.err; echo "rc=$?"; tail -1 $OUT/peer_liger.jsonl; tail -2 $OUT/peer_liger.err | cut -c1-300
echo "== done $(( $(date +%s) - t0 ))s"
