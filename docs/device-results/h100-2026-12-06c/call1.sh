#!/usr/bin/env bash
# 2026-12-06 (evening session), call 1: where a single-stream decode step of the Qwen3-1.7B shape spends its time,
# kernel by kernel, measured by Nsight Compute (each kernel alone, serialized; gpu__time_duration and DRAM bytes), and
# the step as the bench times it (PDL off / on).
set -u
rm -rf /tmp/x && mkdir -p /tmp/x && tar -xJf .device/s1/pub.tar.xz -C /tmp/x
export FINETUNE_KERNEL_CACHE=/tmp/kc
FT=/tmp/x/pub/finetune; R=/tmp/r; mkdir -p $R
nvidia-smi --query-gpu=name --format=csv,noheader
NCU=$(command -v ncu || ls /opt/nvidia/nsight-compute/*/ncu | head -1); echo "ncu: $NCU"
python3 tests/device/hf_generate_bench.py /tmp/m17 --make-model > $R/m17.json 2>&1
for v in 0 1; do
  FINETUNE_PDL=$v timeout 60 $FT bench --generate --device cuda --model /tmp/m17 --batches 1 --prompts 8 --prompt-len 64 --new-tokens 64 > $R/gen_pdl$v.jsonl 2>&1
  echo "m17 pdl=$v $(grep -o '"decode_tokens_per_s_per_seq":[0-9.]*' $R/gen_pdl$v.jsonl)"
done
timeout 240 $NCU --clock-control none --launch-skip 2500 --launch-count 400 --csv --page raw \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum,launch__grid_size,launch__block_size,launch__registers_per_thread \
  $FT bench --generate --device cuda --model /tmp/m17 --batches 1 --prompts 2 --prompt-len 64 --new-tokens 64 > $R/ncu.csv 2> $R/ncu.err
echo "ncu rc=$? lines=$(wc -l < $R/ncu.csv)"; tail -3 $R/ncu.err
tar -cJf $OUT/call1.tar.xz -C $R .
