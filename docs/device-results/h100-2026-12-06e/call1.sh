#!/usr/bin/env bash
# Call 1 (2026-12-06, evening session): the decode checks with the one-kernel setting no longer left off by the
# split-attention check before them (so the decode_layer rows really launch it), decode_layer's stage trace, the
# generate checks, and single-stream decode A/B over decode_layer's warps a block (8, 10, 12) and its L2 prefetch.
set -u
rm -rf /tmp/x && mkdir -p /tmp/x && tar -xJf .device/s1/pub.tar.xz -C /tmp/x
export FINETUNE_KERNEL_CACHE=/tmp/kc
FT=/tmp/x/pub/finetune; DC=/tmp/x/pub/FineTune.DeviceChecks; R=$OUT/r; W=/tmp/w; mkdir -p $R $W # results straight under $OUT: what a cut-off call wrote still comes back
nvidia-smi --query-gpu=name,clocks.max.sm --format=csv,noheader
timeout 240 $DC decode $W/decode > $R/decode.txt 2>&1; echo "decode rc=$?"
grep -E "checks:|FAIL|decode layer H.*(one launch [0-9]|not launched|trace)|decode_layer:" $R/decode.txt | head -30
timeout 60 $DC generate $W/generate > $R/generate.txt 2>&1; echo "generate rc=$?"; grep -E "checks:|FAIL" $R/generate.txt | head
[ -f /tmp/m17/config.json ] || python3 tests/device/hf_generate_bench.py /tmp/m17 --make-model > $R/m17.json 2>&1
B="bench --generate --device cuda --model /tmp/m17 --batches 1 --prompts 8 --prompt-len 64 --new-tokens 64"
for cfg in "0 8 0 24" "1 8 0 24" "1 8 0 0" "1 12 0 0" "0 8 0 24"; do
  set -- $cfg
  FINETUNE_PERSISTENT_LAYER=$1 FINETUNE_PERSISTENT_LAYER_WARPS=$2 FINETUNE_PERSISTENT_LAYER_DEPTH=$3 FINETUNE_PERSISTENT_LAYER_L2=$4 timeout 60 $FT $B > $R/gen_$1_$2_$3_$4.jsonl 2>&1
  echo "m17 layer=$1 warps=$2 depth=$3 l2=$4MB $(grep -o '"decode_tokens_per_s_per_seq":[0-9.]*' $R/gen_$1_$2_$3_$4.jsonl)"
done
# B: the same build with decode_layer's gate/up by one warp a column (no pair barriers): its checks and A/B.
if [ -f .device/s2/ft.tar.xz ]; then
  rm -rf /tmp/y && cp -r /tmp/x/pub /tmp/y && tar -xJf .device/s2/ft.tar.xz -C /tmp/y
  timeout 200 /tmp/y/FineTune.DeviceChecks decode $W/decodeB > $R/decodeB.txt 2>&1; echo "B decode rc=$?"
  grep -E "checks:|FAIL|decode layer H.*(one launch [0-9]|not launched|trace)" $R/decodeB.txt | head -30
  for cfg in "0 8 0 24" "1 8 0 0" "1 12 0 0" "1 8 0 24"; do
    set -- $cfg
    FINETUNE_PERSISTENT_LAYER=$1 FINETUNE_PERSISTENT_LAYER_WARPS=$2 FINETUNE_PERSISTENT_LAYER_DEPTH=$3 FINETUNE_PERSISTENT_LAYER_L2=$4 timeout 60 /tmp/y/finetune $B > $R/genB_$1_$2_$3_$4.jsonl 2>&1
    echo "B m17 layer=$1 warps=$2 depth=$3 l2=$4MB $(grep -o '"decode_tokens_per_s_per_seq":[0-9.]*' $R/genB_$1_$2_$3_$4.jsonl)"
  done
fi
# The decode graph's kernels as they run in the replayed graph (Nsight Systems node trace), composed and with decode_layer.
NSYS=$(command -v nsys || ls /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/bin/nsys /opt/nvidia/nsight-compute/*/host/target-linux-x64/nsys 2>/dev/null | head -1); echo "nsys: $NSYS"
for L in 0 1; do
  FINETUNE_PERSISTENT_LAYER=$L FINETUNE_PERSISTENT_LAYER_L2=0 timeout 100 $NSYS profile --trace=cuda --cuda-graph-trace=node --sample=none --cpuctxsw=none -o $W/dec$L -f true \
    $FT bench --generate --device cuda --model /tmp/m17 --batches 1 --prompts 1 --prompt-len 64 --new-tokens 48 > $R/nsys$L.out 2>&1; echo "nsys $L rc=$?"
  timeout 90 $NSYS stats --report cuda_gpu_trace --format csv --output $R/trace$L $W/dec$L.nsys-rep > $R/stats$L.out 2>&1; echo "stats $L rc=$?"
  python3 tests/device/graph_trace_summary.py $R/trace${L}_cuda_gpu_trace.csv 2>&1 | head -30
done
ls -la $R
