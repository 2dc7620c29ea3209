#!/usr/bin/env bash
# 2026-12-06 (afternoon), call 3: after the review refactor (CudaDevice's plain, dependent and cooperative launches
# through one Queue; decode_mlp_tail's occupancy queried once a shape): decode + generate checks (tail on, with PDL),
# ops, and the 1.7B single stream off / on once each.
set -u
rm -rf /tmp/x && mkdir -p /tmp/x && tar -xJf .device/s1/pub.tar.xz -C /tmp/x
export FINETUNE_KERNEL_CACHE=/tmp/kc3
FT=/tmp/x/pub/finetune; DC=/tmp/x/pub/FineTune.DeviceChecks; R=/tmp/r3; mkdir -p $R
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 150 $DC decode $R/decode > $R/decode.txt 2>&1; echo "decode rc=$?"; grep -E "checks:|FAIL" $R/decode.txt | head
FINETUNE_PERSISTENT_MLP=1 FINETUNE_PDL=1 timeout 120 $DC generate $R/generate > $R/generate.txt 2>&1; echo "generate rc=$?"; grep -E "checks:|FAIL" $R/generate.txt | head
timeout 200 $DC ops $R/ops > $R/ops.txt 2>&1; echo "ops rc=$?"; grep -E "FAIL" $R/ops.txt | head; tail -1 $R/ops.txt
[ -f /tmp/m17/config.json ] || python3 tests/device/hf_generate_bench.py /tmp/m17 --make-model > $R/m17.json 2>&1
for v in 0 1; do
  FINETUNE_PERSISTENT_MLP=$v timeout 60 $FT bench --generate --device cuda --model /tmp/m17 --batches 1 --prompts 8 --prompt-len 64 --new-tokens 64 > $R/gen_m17_$v.jsonl 2>&1
  echo "m17 persistent=$v $(grep -o '"decode_tokens_per_s_per_seq":[0-9.]*' $R/gen_m17_$v.jsonl)"
done
rm -rf $R/decode $R/generate $R/ops; tar -cJf $OUT/call3.tar.xz -C $R .
