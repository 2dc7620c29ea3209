#!/usr/bin/env bash
# Single-stream decode after the down_proj fusion at K > 8192 (Llama-3-8B's 14336 now runs gemv_residual instead of
# gemv_bf16 + ft_add_v8), in one job on the GPU machine (~3 min with the model dirs made; python3 with torch and
# transformers only to make them):
#   tests/device/decode_gemv.sh <finetune single-file binary> <FineTune.DeviceChecks single-file binary> <out dir> [qwen3-1.7b dir] [llama3-8b dir]
# A model dir not given (or without config.json) is written first by hf_generate_bench.py --make-model (random weights,
# bf16; the 8B one is 16 GB and takes minutes; "-" as the 8B dir skips that shape). Each step's output is kept under
# <out dir>; the exit code is 1 when a check failed. The FINETUNE_GEMV_PIPELINE A/B of the brief is not here: that
# kernel change was not made (see docs/cuda.md); FINETUNE_FUSED_DECODE=0 is the A/B of the fused layer instead.
set -uo pipefail
ft=$(realpath "$1"); dc=$(realpath "$2"); out=$3; here=$(dirname "$0"); rc=0
mkdir -p "$out"
m17=${4:-$out/m17}; m8=${5:-$out/m8}
[ -f "$m17/config.json" ] || python3 "$here/hf_generate_bench.py" "$m17" --make-model | tee "$out/m17.json"
[ "$m8" = - ] || [ -f "$m8/config.json" ] || python3 "$here/hf_generate_bench.py" "$m8" --make-model --shape llama3-8b | tee "$out/m8.json"
export FINETUNE_KERNEL_CACHE=${FINETUNE_KERNEL_CACHE:-$out/kernel-cache}
"$dc" compile sm_90 decode.cu,gemv.cu,kv_cache.cu 2>&1 | tee "$out/compile.txt" || rc=1
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
if [ "$m8" != - ]; then
    # The 8B profile should show gemv_residual at ~2× the 1.7B share and no ft_add_v8 (before: 0.127 ms a step).
    bench m8 "$m8" 4
    bench m8_unfused "$m8" 4 FINETUNE_FUSED_DECODE=0
fi
exit $rc
