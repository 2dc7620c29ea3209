#!/usr/bin/env bash
# For the next session's first device call (publish as the README's "The GPU machine" says into .device/s1/pub.tar.xz,
# carry it): `ops` first — since bcbb839 CudaDevice.Launch raises the dynamic shared-memory limit for the flash and
# experts kernels too (they no longer do it themselves; only gemv_residual's 57 KiB launch was seen on the H200 on
# 2026-12-04) — then `models` on three families, then the decode checks and the single-stream A/B without the 8B model.
set -u
t0=$(date +%s)
rm -rf /tmp/x && mkdir -p /tmp/x && tar -xJf .device/s1/pub.tar.xz -C /tmp/x
FT=/tmp/x/pub; R=/tmp/rn; mkdir -p $R
export FINETUNE_KERNEL_CACHE=/tmp/kc
timeout 200 $FT/FineTune.DeviceChecks ops $R/ops > $R/ops.txt 2>&1; echo "ops rc=$? $(( $(date +%s) - t0 ))s"
grep -E "FAIL" $R/ops.txt | head -10; tail -1 $R/ops.txt
DEVICECHECKS_MODELS=llama,qwen2,gemma timeout 150 $FT/FineTune.DeviceChecks models $R/models > $R/models.txt 2>&1; echo "models rc=$? $(( $(date +%s) - t0 ))s"
grep -E "FAIL" $R/models.txt | head -10; tail -1 $R/models.txt
timeout 200 bash tests/device/decode_staged.sh $FT/finetune $FT/FineTune.DeviceChecks $R/dec /tmp/m17 - 2>&1 | grep -v "^ok "
echo "== done $(( $(date +%s) - t0 ))s"
rm -rf $R/dec/kernel-cache $R/dec/m17 $R/ops $R/models; tar -cJf $OUT/next.tar.xz -C $R .
