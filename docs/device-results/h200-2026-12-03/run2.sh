#!/usr/bin/env bash
set -u
t0=$(date +%s)
mkdir -p /tmp/ft && [ -x /tmp/ft/finetune ] || tar -xJf .device/s1/pub.tar.xz -C /tmp/ft
FT=/tmp/ft
export FINETUNE_KERNEL_CACHE=/tmp/kc
echo "== decode $(( $(date +%s) - t0 ))s"
timeout 420 bash tests/device/decode_gemv.sh $FT/finetune $FT/FineTune.DeviceChecks $OUT/dec /tmp/m17 /tmp/m8 > $OUT/decode_gemv.txt 2>&1; echo "rc=$?"
grep -E "FAIL|checks:|passed|GB/s" $OUT/decode_gemv.txt | head -60; grep -E '"bench":"generate"' $OUT/decode_gemv.txt | cut -c1-600
echo "== done $(( $(date +%s) - t0 ))s"
