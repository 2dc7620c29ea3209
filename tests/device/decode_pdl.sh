#!/usr/bin/env bash
# Single-stream decode with and without programmatic dependent launch (the GEMVs' L2 prefetch before the wait) and the
# one-kernel split-K attention, in one job on the GPU machine (~3 min with the model dirs made; python3 with torch and
# transformers only to make them):
#   tests/device/decode_pdl.sh <finetune single-file binary> <FineTune.DeviceChecks single-file binary> <out dir> [qwen3-1.7b dir] [llama3-8b dir]
# A model dir not given (or without config.json) is written first by hf_generate_bench.py --make-model (random weights,
# bf16; the 8B one is 16 GB and takes minutes; "-" as the 8B dir skips that shape). Each step's output is kept under
# <out dir>; the exit code is 1 when a check failed.
source "$(dirname "$0")/decode_setup.sh"
# Bits: each fused decode op, launched as a dependent (with the prefetch) against plain launches and against the
# composition; split-K attention in one kernel against split + combine, in both modes. Tokens: the generation engine
# with PDL on against off (graphs and eager) and the two-kernel attention.
FINETUNE_PDL=1 "$dc" decode "$out/decode" 2>&1 | tee "$out/decode.txt" || rc=1
FINETUNE_PDL=1 "$dc" generate "$out/generate" 2>&1 | tee "$out/generate.txt" || rc=1
# Single stream (batch 1, graphs), the issue's measure: PDL off / on; and the 7-launch layer of before
# (FINETUNE_SPLITK_ONE_KERNEL=0: qk_rope_cache, split, combine as three launches; PDL off) for the launch-count A/B.
bench() { # name model prompts env...
    local name=$1 model=$2 prompts=$3; shift 3
    env "$@" "$ft" bench --generate --device cuda --model "$model" --batches 1 --prompts "$prompts" --prompt-len 64 \
        --new-tokens 64 --profile 2>&1 | tee "$out/gen_$name.jsonl" | grep -E '"bench":"generate(_profile)?"|rror'
}
bench m17_pdl0 "$m17" 8 FINETUNE_PDL=0
bench m17_pdl1 "$m17" 8 FINETUNE_PDL=1
bench m17_pdl0_twokernel "$m17" 8 FINETUNE_PDL=0 FINETUNE_SPLITK_ONE_KERNEL=0
if [ "$m8" != - ]; then
    bench m8_pdl0 "$m8" 4 FINETUNE_PDL=0
    bench m8_pdl1 "$m8" 4 FINETUNE_PDL=1
fi
exit $rc
