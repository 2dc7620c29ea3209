#!/usr/bin/env bash
# Call 3: the 64-register decode GEMVs (FINETUNE_DECODE_BOUNDED) and the rope attention's new key from registers:
# decode + generate checks (bits), Nsight Compute durations/registers, single-stream A/B in rounds.
set -u
rm -rf /tmp/x && mkdir -p /tmp/x && tar -xJf .device/s1/pub.tar.xz -C /tmp/x
export FINETUNE_KERNEL_CACHE=/tmp/kc
FT=/tmp/x/pub/finetune; DC=/tmp/x/pub/FineTune.DeviceChecks; R=/tmp/r3; mkdir -p $R
nvidia-smi --query-gpu=name --format=csv,noheader
FINETUNE_DECODE_BOUNDED=1 timeout 150 $DC decode $R/decode > $R/decode.txt 2>&1; echo "decode (bounded) rc=$?"; grep -E "checks:|FAIL" $R/decode.txt | head
timeout 120 $DC generate $R/generate > $R/generate.txt 2>&1; echo "generate rc=$?"; grep -E "checks:|FAIL" $R/generate.txt | head
[ -f /tmp/m17/config.json ] || python3 tests/device/hf_generate_bench.py /tmp/m17 --make-model > $R/m17.json 2>&1
for round in 1 2; do
  for v in none gemv_norm_set 1; do
    FINETUNE_DECODE_BOUNDED=$v timeout 60 $FT bench --generate --device cuda --model /tmp/m17 --batches 1 --prompts 8 --prompt-len 64 --new-tokens 64 > $R/gen_m17_${v}_$round.jsonl 2>&1
    echo "m17 bounded=$v round $round $(grep -o '"decode_tokens_per_s_per_seq":[0-9.]*' $R/gen_m17_${v}_$round.jsonl)"
  done
done
FINETUNE_DECODE_BOUNDED=1 timeout 120 ncu --clock-control none --cache-control none --launch-skip 2500 --launch-count 200 --csv --page raw \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,launch__registers_per_thread,launch__waves_per_multiprocessor \
  $FT bench --generate --device cuda --model /tmp/m17 --batches 1 --prompts 2 --prompt-len 64 --new-tokens 64 > $R/ncu_bounded.csv 2> $R/ncu.err
echo "ncu rc=$?"
rm -rf $R/decode $R/generate; tar -cJf $OUT/call3.tar.xz -C $R .
