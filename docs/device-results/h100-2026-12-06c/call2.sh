#!/usr/bin/env bash
# Call 2: the same Nsight Compute pass with caches left warm (--cache-control none: each kernel sees the L2 and TLBs the
# kernel before it left, as in the graph), and the step's profile (eager kernel times, graph replay).
set -u
rm -rf /tmp/x && mkdir -p /tmp/x && tar -xJf .device/s1/pub.tar.xz -C /tmp/x
export FINETUNE_KERNEL_CACHE=/tmp/kc
FT=/tmp/x/pub/finetune; R=/tmp/r2; mkdir -p $R
nvidia-smi --query-gpu=name --format=csv,noheader
[ -f /tmp/m17/config.json ] || python3 tests/device/hf_generate_bench.py /tmp/m17 --make-model > $R/m17.json 2>&1
timeout 60 $FT bench --generate --device cuda --model /tmp/m17 --batches 1 --prompts 8 --prompt-len 64 --new-tokens 64 --profile > $R/gen_prof.jsonl 2>&1
tail -1 $R/gen_prof.jsonl | cut -c1-400
timeout 240 ncu --clock-control none --cache-control none --launch-skip 2500 --launch-count 400 --csv --page raw \
  --metrics gpu__time_duration.sum,dram__bytes_read.sum,dram__bytes_write.sum \
  $FT bench --generate --device cuda --model /tmp/m17 --batches 1 --prompts 2 --prompt-len 64 --new-tokens 64 > $R/ncu_warm.csv 2> $R/ncu.err
echo "ncu rc=$? lines=$(wc -l < $R/ncu_warm.csv)"
timeout 200 ncu --clock-control none --cache-control none --kernel-name cached_attention_rope_split --launch-skip 60 --launch-count 3 \
  --section SpeedOfLight --section WarpStateStats --section SourceCounters --section LaunchStats --section Occupancy -f -o $R/att \
  $FT bench --generate --device cuda --model /tmp/m17 --batches 1 --prompts 1 --prompt-len 64 --new-tokens 64 > $R/ncu_att.out 2>&1
echo "ncu att rc=$?"
ncu --import $R/att.ncu-rep --page details --csv > $R/att_details.csv 2>&1
ncu --import $R/att.ncu-rep --page source --csv --print-source sass > $R/att_sass.csv 2>&1
ls -la $R
tar -cJf $OUT/call2.tar.xz -C $R .
