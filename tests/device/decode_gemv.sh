#!/usr/bin/env bash
# Single-stream decode after the down_proj fusion at K > 8192 (Llama-3-8B's 14336 now runs gemv_residual instead of
# gemv_bf16 + ft_add_v8), in one job on the GPU machine (~3 min with the model dirs made; python3 with torch and
# transformers only to make them):
#   tests/device/decode_gemv.sh <finetune single-file binary> <FineTune.DeviceChecks single-file binary> <out dir> [qwen3-1.7b dir] [llama3-8b dir]
# A model dir not given (or without config.json) is written first by hf_generate_bench.py --make-model (random weights,
# bf16; the 8B one is 16 GB and takes minutes; "-" as the 8B dir skips that shape). Each step's output is kept under
# <out dir>; the exit code is 1 when a check failed. FINETUNE_FUSED_DECODE=0 (every fused decode op off) is the A/B of
# the fused layer on the 8B shape; FINETUNE_DECODE_COLUMNS=2 and 4 (the GEMVs' columns a warp) and a per-kernel mix
# beside the default 1 on both shapes.
source "$(dirname "$0")/decode_setup.sh"
# Bits: each fused decode op against the composition and the other launch mode; matmul+residual at K = 14336 must
# launch gemv_residual at one and two rows. Tokens: the generation engine's checks (graphs and eager).
"$dc" decode "$out/decode" 2>&1 | tee "$out/decode.txt" || rc=1
"$dc" generate "$out/generate" 2>&1 | tee "$out/generate.txt" || rc=1
bench() { # name model prompts env...
    local name=$1 model=$2 prompts=$3; shift 3
    env "$@" "$ft" bench --generate --device cuda --model "$model" --batches 1 --prompts "$prompts" --prompt-len 64 \
        --new-tokens 64 --profile 2>&1 | tee "$out/gen_$name.jsonl" | grep -E '"bench":"generate(_profile)?"|rror'
}
bench m17 "$m17" 8
# Cross-column GEMVs (FINETUNE_DECODE_COLUMNS, default 1; the `decode` output above has their GB/s per kernel and C).
bench m17_cols2 "$m17" 8 FINETUNE_DECODE_COLUMNS=2
bench m17_cols4 "$m17" 8 FINETUNE_DECODE_COLUMNS=4
# Per kernel: where each gained alone on 2026-12-03 (`decode`'s GB/s lines), the others at 1.
bench m17_mix "$m17" 8 FINETUNE_DECODE_COLUMNS=gemv_norm_set=2,gemv_norm_swiglu=3
if [ "$m8" != - ]; then
    # The 8B profile should show gemv_residual at ~2× the 1.7B share and no ft_add_v8 (before: 0.127 ms a step).
    bench m8 "$m8" 4
    bench m8_unfused "$m8" 4 FINETUNE_FUSED_DECODE=0
    bench m8_cols2 "$m8" 4 FINETUNE_DECODE_COLUMNS=2
    bench m8_cols4 "$m8" 4 FINETUNE_DECODE_COLUMNS=4
    bench m8_mix "$m8" 4 FINETUNE_DECODE_COLUMNS=gemv_norm_set=3,gemv_residual=2
fi
exit $rc
