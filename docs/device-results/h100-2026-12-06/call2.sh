#!/usr/bin/env bash
# 2026-12-06, call 2 (call 1 = call1.sh): ops + models (three families) + decode checks, then single stream on the
# Qwen3-1.7B shape with the L2 prefetch by the empty-range blocks of the attention kernel only (mode 1), 8-48 MiB.
set -u
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 ))s]"; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader
rm -rf /tmp/x && mkdir -p /tmp/x && tar -xJf .device/s1/pub.tar.xz -C /tmp/x
export FINETUNE_KERNEL_CACHE=/tmp/kc
FT=/tmp/x/pub/finetune; DC=/tmp/x/pub/FineTune.DeviceChecks; R=/tmp/r2; mkdir -p $R
[ -f /tmp/m17/config.json ] || python3 tests/device/hf_generate_bench.py /tmp/m17 --make-model > $R/m17.json 2>&1
el; echo model
timeout 200 $DC ops $R/ops > $R/ops.txt 2>&1; echo "ops rc=$?"; el
grep -E "FAIL" $R/ops.txt | head -10; tail -1 $R/ops.txt
DEVICECHECKS_MODELS=llama,qwen2,gemma timeout 150 $DC models $R/models > $R/models.txt 2>&1; echo "models rc=$?"; el
grep -E "FAIL" $R/models.txt | head -10; tail -1 $R/models.txt
timeout 100 $DC decode $R/decode > $R/decode.txt 2>&1; echo "decode rc=$?"; el
grep -E "checks:|FAIL|one kernel .*prefetching" $R/decode.txt | head -30
bench() { # name binary [--profile] -- env...
    local name=$1 bin=$2 prof=$3; shift 3
    env "$@" timeout 60 "$bin" bench --generate --device cuda --model /tmp/m17 --batches 1 --prompts 8 --prompt-len 64 --new-tokens 64 $prof > "$R/gen_$name.jsonl" 2>&1
    python3 -c "
import json
rows=[json.loads(l) for l in open('$R/gen_$name.jsonl') if l.startswith('{')]
g=[r for r in rows if r.get('bench')=='generate']; p=[r for r in rows if r.get('bench')=='generate_profile']
print('$name', *(f\"{r['tokens_per_s']:.1f} {r['decode_tokens_per_s_per_seq']:.1f}\" for r in g) or ['no result'], *(f\"replay {r['graph_replay_ms']} ms {r['graph_replay_bandwidth_fraction']} {json.dumps(r['kernels'])[:600]}\" for r in p), flush=True)"
}
for round in 1 2; do
  bench new_$round $FT "" FINETUNE_DECODE_PREFETCH_MB=0
  bench e16_$round $FT "" FINETUNE_DECODE_PREFETCH_MB=16
  bench e32_$round $FT "" FINETUNE_DECODE_PREFETCH_MB=32
  el
done
bench e48 $FT "" FINETUNE_DECODE_PREFETCH_MB=48
bench e32_last $FT "" FINETUNE_DECODE_PREFETCH_MB=32 FINETUNE_DECODE_PREFETCH_MODE=3
bench e8 $FT "" FINETUNE_DECODE_PREFETCH_MB=8
bench prof_new $FT --profile FINETUNE_DECODE_PREFETCH_MB=0
bench prof_e32 $FT --profile FINETUNE_DECODE_PREFETCH_MB=32
bench prof_e16 $FT --profile FINETUNE_DECODE_PREFETCH_MB=16
el; echo done
rm -rf $R/decode $R/ops $R/models; tar -cJf $OUT/call2.tar.xz -C $R .
