#!/usr/bin/env bash
# The slim form of call1.sh for the session's last ~140 s of device time: the decode checks (decode_layer's bits and
# stage trace) and a short A/B, on the committed build (A) and with gate/up by one warp a column (B).
set -u
rm -rf /tmp/x && mkdir -p /tmp/x && tar -xJf .device/s1/pub.tar.xz -C /tmp/x
export FINETUNE_KERNEL_CACHE=/tmp/kc
R=$OUT/r; W=/tmp/w; mkdir -p $R $W # results straight under $OUT: what a cut-off call wrote still comes back
nvidia-smi --query-gpu=name --format=csv,noheader
rm -rf /tmp/y && cp -r /tmp/x/pub /tmp/y && tar -xJf .device/s2/ft.tar.xz -C /tmp/y
python3 tests/device/hf_generate_bench.py /tmp/m17 --make-model > $R/m17.json 2>&1 &
timeout 70 /tmp/y/FineTune.DeviceChecks decode $W/decodeB > $R/decodeB.txt 2>&1; echo "B decode rc=$?"
grep -E "checks:|FAIL|decode layer H.*(one launch [0-9]|not launched|trace)" $R/decodeB.txt | head -24
wait
B="bench --generate --device cuda --model /tmp/m17 --batches 1 --prompts 4 --prompt-len 64 --new-tokens 64"
for cfg in "x 0 8" "x 1 8" "y 1 8" "y 1 12" "y 0 8"; do
  set -- $cfg
  F=/tmp/x/pub/finetune; [ $1 = y ] && F=/tmp/y/finetune
  FINETUNE_PERSISTENT_LAYER=$2 FINETUNE_PERSISTENT_LAYER_WARPS=$3 FINETUNE_PERSISTENT_LAYER_L2=0 timeout 30 $F $B > $R/gen_$1_$2_$3.jsonl 2>&1
  echo "m17 build=$1 layer=$2 warps=$3 $(grep -o '"decode_tokens_per_s_per_seq":[0-9.]*' $R/gen_$1_$2_$3.jsonl)"
done
timeout 60 /tmp/x/pub/FineTune.DeviceChecks decode $W/decode > $R/decode.txt 2>&1; echo "A decode rc=$?"
grep -E "checks:|FAIL|decode layer H.*(one launch [0-9]|not launched|trace)" $R/decode.txt | head -24
