#!/usr/bin/env bash
set -u
t0=$(date +%s)
mkdir -p /tmp/ft && tar -xJf .device/s1/pub.tar.xz -C /tmp/ft
FT=/tmp/ft
ls /usr/lib/x86_64-linux-gnu/ | grep -i cudnn | head; python3 -c "import torch;print(torch.backends.cudnn.version())"
echo "== cudnn $(( $(date +%s) - t0 ))s"
timeout 200 $FT/FineTune.DeviceChecks cudnn $OUT > $OUT/cudnn.txt 2>&1; echo "rc=$?"
head -c 9000 $OUT/cudnn.txt
echo "== ops $(( $(date +%s) - t0 ))s"
timeout 240 $FT/FineTune.DeviceChecks ops > $OUT/ops.txt 2>&1; echo "rc=$?"
grep "FAIL" $OUT/ops.txt | head -20; tail -3 $OUT/ops.txt
echo "== done $(( $(date +%s) - t0 ))s"
