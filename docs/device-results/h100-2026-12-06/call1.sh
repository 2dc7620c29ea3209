#!/usr/bin/env bash
# 2026-12-06, call 1: decode + generate checks (kv_cache.cu: empty split ranges return at once, first K/V tile before the
# rope work; the L2 prefetch of o_proj/gate/up by the attention kernel), then single stream on the Qwen3-1.7B shape:
# this build without prefetch, the base (88861b7's Engine + Models), with 16/24/32/40 MiB prefetched, evict_last.
set -u
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 ))s]"; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader
rm -rf /tmp/x && mkdir -p /tmp/x && tar -xJf .device/s1/pub.tar.xz -C /tmp/x
cp -r /tmp/x/pub /tmp/x/base && cp /tmp/x/old/*.dll /tmp/x/base/
export FINETUNE_KERNEL_CACHE=/tmp/kc
FT=/tmp/x/pub/finetune; DC=/tmp/x/pub/FineTune.DeviceChecks; R=/tmp/r1; mkdir -p $R
[ -f /tmp/m17/config.json ] || python3 tests/device/hf_generate_bench.py /tmp/m17 --make-model > $R/m17.json 2>&1
el; echo model
timeout 200 $DC decode $R/decode > $R/decode.txt 2>&1; echo "decode rc=$?"; el
grep -E "checks:|FAIL|one kernel .*prefetching" $R/decode.txt | head -30
timeout 100 $DC generate $R/generate > $R/generate.txt 2>&1; echo "generate rc=$?"; el
grep -E "checks:|FAIL" $R/generate.txt | head
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
  bench base_$round /tmp/x/base/finetune ""
  bench pf16_$round $FT "" FINETUNE_DECODE_PREFETCH_MB=16
  bench pf32_$round $FT "" FINETUNE_DECODE_PREFETCH_MB=32
  el
done
bench pf24 $FT "" FINETUNE_DECODE_PREFETCH_MB=24
bench pf40 $FT "" FINETUNE_DECODE_PREFETCH_MB=40
bench pf32_last $FT "" FINETUNE_DECODE_PREFETCH_MB=32 FINETUNE_DECODE_PREFETCH_MODE=2
bench pf16_last $FT "" FINETUNE_DECODE_PREFETCH_MB=16 FINETUNE_DECODE_PREFETCH_MODE=2
el
bench prof_new $FT --profile FINETUNE_DECODE_PREFETCH_MB=0
bench prof_pf32 $FT --profile FINETUNE_DECODE_PREFETCH_MB=32
bench prof_base /tmp/x/base/finetune --profile
el; echo done
rm -rf $R/decode $R/generate; tar -cJf $OUT/call1.tar.xz -C $R .
