#!/usr/bin/env bash
# 2026-12-04, call 5: decode_staged.sh (gate/up in warp pairs; the norm rows staged with one round trip) on both shapes, FT_BASE = the build before (621a412's FineTune.Engine.dll in a
# copy of this publish).
set -u
t0=$(date +%s)
rm -rf /tmp/x && mkdir -p /tmp/x && tar -xJf .device/s1/pub.tar.xz -C /tmp/x
cp -r /tmp/x/pub /tmp/x/base && cp /tmp/x/old/FineTune.Engine.dll /tmp/x/base/
export FINETUNE_KERNEL_CACHE=/tmp/kc
FT_BASE=/tmp/x/base/finetune timeout 570 bash tests/device/decode_staged.sh /tmp/x/pub/finetune /tmp/x/pub/FineTune.DeviceChecks /tmp/r3 /tmp/m17 /tmp/m8 2>&1 | grep -v "^ok "
echo "rc=$? $(( $(date +%s) - t0 ))s"
rm -rf /tmp/r3/kernel-cache /tmp/r3/m17 /tmp/r3/m8 /tmp/r3/decode /tmp/r3/generate; tar -cJf $OUT/run3.tar.xz -C /tmp/r3 .
