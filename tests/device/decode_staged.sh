#!/usr/bin/env bash
# Single-stream decode with the GEMVs' input rows staged in shared memory (CudaBackend.UseGemvStaging, the default since
# 2026-12-04), in one job on the GPU machine:
#   [FT_BASE=<an earlier finetune build>] tests/device/decode_staged.sh <finetune> <FineTune.DeviceChecks> <out dir> [qwen3-1.7b dir] [llama3-8b dir]
# Model dirs as decode_setup.sh says ("-" as the 8B dir skips that shape). Runs the `decode` checks (every fused op's
# bits against the composition, the other launch mode, C columns a warp, and A from global memory; each GEMV's time
# staged and not) and the `generate` checks, then on each shape, twice in turn: this build, FT_BASE when given (the
# build before, for the A/B in one job), and this build with FINETUNE_GEMV_STAGE=0; then 16 warps a block
# (FINETUNE_DECODE_WARPS=16), programmatic dependent launch (FINETUNE_PDL=1) and a --profile run (per-kernel times, the graph step). One line per run: name, tokens/s, decode tokens/s per sequence. Exit code 1 when a check
# failed.
source "$(dirname "$0")/decode_setup.sh"
"$dc" decode "$out/decode" > "$out/decode.txt" 2>&1 || rc=1
grep -E "checks:|FAIL|staged in shared" "$out/decode.txt"
"$dc" generate "$out/generate" > "$out/generate.txt" 2>&1 || rc=1
grep -E "checks:|FAIL" "$out/generate.txt"
bench() { # name model prompts binary env...
    local name=$1 model=$2 prompts=$3 bin=$4; shift 4
    env "$@" "$bin" bench --generate --device cuda --model "$model" --batches 1 --prompts "$prompts" --prompt-len 64 \
        --new-tokens 64 ${PROFILE:-} > "$out/gen_$name.jsonl" 2>&1
    python3 - "$name" "$out/gen_$name.jsonl" <<'EOF'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[2]) if l.startswith('{') and '"bench":"generate"' in l]
print(sys.argv[1], *(f"{r['tokens_per_s']:.1f} {r['decode_tokens_per_s_per_seq']:.1f}" for r in rows) or ['no result'], flush=True)
EOF
}
shape() { # tag model prompts
    for round in 1 2; do
        bench "$1_staged_$round" "$2" "$3" "$ft"
        [ -n "${FT_BASE:-}" ] && bench "$1_base_$round" "$2" "$3" "$FT_BASE"
        bench "$1_global_$round" "$2" "$3" "$ft" FINETUNE_GEMV_STAGE=0
    done
    bench "$1_warps16" "$2" "$3" "$ft" FINETUNE_DECODE_WARPS=16
    bench "$1_pdl" "$2" "$3" "$ft" FINETUNE_PDL=1
    PROFILE=--profile bench "$1_profile" "$2" "$3" "$ft"
    grep -E '"bench":"generate_profile"' "$out/gen_$1_profile.jsonl" | cut -c1-400
}
shape m17 "$m17" 8
[ "$m8" = - ] || shape m8 "$m8" 4
exit $rc
