#!/usr/bin/env bash
set -u
t0=$(date +%s)
mkdir -p /tmp/ft && tar -xJf .device/s1/pub.tar.xz -C /tmp/ft && tar -xJf .device/overlay6.tar.xz -C /tmp/ft
FT=/tmp/ft
timeout 300 bash tests/device/decode_pdl.sh $FT/finetune $FT/FineTune.DeviceChecks $OUT/pdl /tmp/m17 - > $OUT/pdl_log.txt 2>&1; echo "rc=$?"
grep -E "FAIL|checks:|passed|failed" $OUT/pdl_log.txt | head -30
for f in $OUT/pdl/gen_*.jsonl; do echo "-- $f"; grep '"bench":"generate"' $f | cut -c1-700; done
echo "== done $(( $(date +%s) - t0 ))s"
