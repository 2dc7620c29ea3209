#!/usr/bin/env bash
# Call 2: decode_layer without local memory (its stream's cursor in registers) and with the L2 prefetch before the attention: the decode checks again (with the refusal reason),
# single-stream A/B over FIFO depth and warps, and Nsight Compute's full set on one decode_layer launch of the bench.
set -u
rm -rf /tmp/x && mkdir -p /tmp/x && tar -xJf .device/s1/pub.tar.xz -C /tmp/x
export FINETUNE_KERNEL_CACHE=/tmp/kc
FT=/tmp/x/pub/finetune; DC=/tmp/x/pub/FineTune.DeviceChecks; R=/tmp/r2; mkdir -p $R
nvidia-smi --query-gpu=name --format=csv,noheader
timeout 200 $DC decode $R/decode > $R/decode.txt 2>&1; echo "decode rc=$?"; grep -E "checks:|FAIL|decode layer H.*(one launch|not launched)|decode_layer:" $R/decode.txt | head -20
[ -f /tmp/m17/config.json ] || python3 tests/device/hf_generate_bench.py /tmp/m17 --make-model > $R/m17.json 2>&1
B="bench --generate --device cuda --model /tmp/m17 --batches 1 --prompts 8 --prompt-len 64 --new-tokens 64"
for cfg in "0 8 0 24" "1 8 0 24" "1 8 0 0" "1 8 0 48" "1 8 3 24" "1 16 2 24" "0 8 0 24" "1 8 0 24"; do
  set -- $cfg
  FINETUNE_PERSISTENT_LAYER=$1 FINETUNE_PERSISTENT_LAYER_WARPS=$2 FINETUNE_PERSISTENT_LAYER_DEPTH=$3 FINETUNE_PERSISTENT_LAYER_L2=$4 timeout 60 $FT $B > $R/gen_$1_$2_$3_$4.jsonl 2>&1
  echo "m17 layer=$1 warps=$2 depth=$3 l2=$4MB $(grep -o '"decode_tokens_per_s_per_seq":[0-9.]*' $R/gen_$1_$2_$3_$4.jsonl)"
done
FINETUNE_PERSISTENT_LAYER=1 timeout 200 ncu --section SpeedOfLight --section MemoryWorkloadAnalysis --section WarpStateStats --section SourceCounters --section LaunchStats --import-source no --kernel-name decode_layer --launch-skip 400 --launch-count 1 \
  -o $R/dl -f $FT bench --generate --device cuda --model /tmp/m17 --batches 1 --prompts 2 --prompt-len 64 --new-tokens 64 > $R/ncu.out 2>&1
echo "ncu rc=$?"; tail -3 $R/ncu.out
ncu -i $R/dl.ncu-rep --page details --csv > $R/details.csv 2>&1
ncu -i $R/dl.ncu-rep --page source --csv --print-source sass > $R/sass.csv 2>&1
python3 - $R <<'PY'
import csv, sys, os
R = sys.argv[1]
rows = list(csv.reader(open(os.path.join(R, 'details.csv'))))
keep = [r for r in rows if any(k in ','.join(r) for k in ('Duration', 'DRAM Throughput', 'Memory Throughput', 'Registers', 'Stall', 'Warp Cycles', 'Achieved', 'Issued', 'Shared Memory', 'L1/TEX Hit', 'L2 Hit', 'Local'))]
print('\n'.join(' | '.join(c for c in r[-4:]) for r in keep[:80]))
lines = list(csv.reader(open(os.path.join(R, 'sass.csv'))))
hdr = next(i for i, r in enumerate(lines) if r and r[0].startswith('#') or (r and 'Source' in r))
h = lines[hdr]; print(h[:12])
col = next((i for i, c in enumerate(h) if c.startswith('Warp Stall Sampling (All')), None)
if col is not None:
    body = [r for r in lines[hdr + 1:] if len(r) > col and r[col].replace(',', '').strip().isdigit()]
    body.sort(key=lambda r: -int(r[col].replace(',', '')))
    tot = sum(int(r[col].replace(',', '')) for r in body)
    with open(os.path.join(R, 'sass_top.csv'), 'w') as f:
        w = csv.writer(f); w.writerow(h)
        for r in body[:60]: w.writerow(r)
    for r in body[:30]: print(int(r[col].replace(',', '')) * 100 // max(tot, 1), '%', r[1][:110])
PY
rm -f $R/sass.csv; rm -rf $R/decode; tar -cJf $OUT/call2.tar.xz -C $R --exclude='*.ncu-rep' .
