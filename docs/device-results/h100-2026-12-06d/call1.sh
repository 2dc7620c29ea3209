#!/usr/bin/env bash
# Call 1: decode_layer (a one-token decode layer as one persistent launch, weights through a cp.async FIFO): the
# decode and generate checks (bits against the three operations), then single-stream A/B on the 1.7B shape in rounds.
set -u
rm -rf /tmp/x && mkdir -p /tmp/x && tar -xJf .device/s1/pub.tar.xz -C /tmp/x
export FINETUNE_KERNEL_CACHE=/tmp/kc
FT=/tmp/x/pub/finetune; DC=/tmp/x/pub/FineTune.DeviceChecks; R=/tmp/r1; mkdir -p $R
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 $DC decode $R/decode > $R/decode.txt 2>&1; echo "decode rc=$?"; grep -E "checks:|FAIL|decode layer H.*one launch|decode_layer:" $R/decode.txt | head -30
FINETUNE_PERSISTENT_LAYER=1 timeout 120 $DC generate $R/generate > $R/generate.txt 2>&1; echo "generate rc=$?"; grep -E "checks:|FAIL" $R/generate.txt | head
[ -f /tmp/m17/config.json ] || python3 tests/device/hf_generate_bench.py /tmp/m17 --make-model > $R/m17.json 2>&1
for round in 1 2; do
  for v in 0 1; do
    FINETUNE_PERSISTENT_LAYER=$v timeout 60 $FT bench --generate --device cuda --model /tmp/m17 --batches 1 --prompts 8 --prompt-len 64 --new-tokens 64 > $R/gen_m17_${v}_$round.jsonl 2>&1
    echo "m17 layer=$v round $round $(grep -o '"decode_tokens_per_s_per_seq":[0-9.]*' $R/gen_m17_${v}_$round.jsonl)"
  done
done
for dp in 3 5; do
  FINETUNE_PERSISTENT_LAYER=1 FINETUNE_PERSISTENT_LAYER_DEPTH=$dp timeout 60 $FT bench --generate --device cuda --model /tmp/m17 --batches 1 --prompts 8 --prompt-len 64 --new-tokens 64 > $R/gen_m17_depth$dp.jsonl 2>&1
  echo "m17 layer=1 depth $dp $(grep -o '"decode_tokens_per_s_per_seq":[0-9.]*' $R/gen_m17_depth$dp.jsonl)"
done
rm -rf $R/decode $R/generate; tar -cJf $OUT/call1.tar.xz -C $R .
