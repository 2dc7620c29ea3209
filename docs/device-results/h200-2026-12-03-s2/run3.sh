#!/usr/bin/env bash
# Session 2 of 2026-12-03, call 5: single-stream decode (Qwen3-1.7B shape) with per-kernel FINETUNE_DECODE_COLUMNS
# (the mix crashed CudaBackend's static initializer in call 4: fixed), single-kernel mixes beside it, then `ops` again
# for the attention-scratch rows' notes check.
set -u
t0=$(date +%s)
rm -rf /tmp/ft; mkdir -p /tmp/ft && tar -xJf .device/s1/pub.tar.xz -C /tmp/ft
FT=/tmp/ft; R=/tmp/r3; mkdir -p $R
timeout 200 bash tests/device/decode_gemv.sh $FT/finetune $FT/FineTune.DeviceChecks $R/dec /tmp/m17 - > $R/decode_gemv.txt 2>&1; echo "decode rc=$? $(( $(date +%s) - t0 ))s"
grep -E "FAIL|checks:" $R/decode_gemv.txt | head; grep -E '"bench":"generate"' $R/decode_gemv.txt | cut -c1-200
for mix in gemv_norm_set=2 gemv_norm_swiglu=3 gemv_norm_set=2,gemv_norm_swiglu=2 1; do
  FINETUNE_DECODE_COLUMNS=$mix $FT/finetune bench --generate --device cuda --model /tmp/m17 --batches 1 --prompts 8 --prompt-len 64 --new-tokens 64 2>&1 \
    | grep -E '"bench":"generate"' | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print('$mix', d['tokens_per_s'], d['decode_tokens_per_s_per_seq'])"
done
export FINETUNE_KERNEL_CACHE=/tmp/kc
timeout 200 $FT/FineTune.DeviceChecks ops $R/ops > $R/ops.txt 2>&1; echo "ops rc=$? $(( $(date +%s) - t0 ))s"
grep -E "FAIL" $R/ops.txt | head -10; grep -cE "scratch.*holds" $R/ops.txt; tail -1 $R/ops.txt
rm -rf $R/dec/kernel-cache; tar -cJf $OUT/run3.tar.xz -C $R .
echo "== done $(( $(date +%s) - t0 ))s"
