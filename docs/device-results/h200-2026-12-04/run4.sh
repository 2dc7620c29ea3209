#!/usr/bin/env bash
# 2026-12-04, call 6: split-K combine with every split's partials loaded at once (kv_cache.cu split_combine_row);
# FT_BASE = 84b86b1's engine (the staged GEMVs). decode + generate checks, then single stream on both shapes, twice in
# turn, and a --profile run each.
set -u
t0=$(date +%s)
rm -rf /tmp/x && mkdir -p /tmp/x && tar -xJf .device/s1/pub.tar.xz -C /tmp/x
cp -r /tmp/x/pub /tmp/x/base && cp /tmp/x/old/FineTune.Engine.dll /tmp/x/base/
export FINETUNE_KERNEL_CACHE=/tmp/kc
for m in /tmp/m17 /tmp/m8; do [ -f $m/config.json ] || python3 tests/device/hf_generate_bench.py $m --make-model $([ $m = /tmp/m8 ] && echo --shape llama3-8b) > /dev/null 2>&1; done
source tests/device/decode_setup.sh /tmp/x/pub/finetune /tmp/x/pub/FineTune.DeviceChecks /tmp/r4 /tmp/m17 /tmp/m8
"$dc" decode "$out/decode" > "$out/decode.txt" 2>&1 || rc=1
grep -E "checks:|FAIL" "$out/decode.txt"; grep -E "one kernel .* ms" "$out/decode.txt" | head -8
"$dc" generate "$out/generate" > "$out/generate.txt" 2>&1 || rc=1
grep -E "checks:|FAIL" "$out/generate.txt"
bench() { # name model prompts binary [--profile]
    "$4" bench --generate --device cuda --model "$2" --batches 1 --prompts "$3" --prompt-len 64 --new-tokens 64 ${5:-} > "$out/gen_$1.jsonl" 2>&1
    python3 -c "
import json,sys
rows=[json.loads(l) for l in open('$out/gen_$1.jsonl') if l.startswith('{')]
g=[r for r in rows if r.get('bench')=='generate']; p=[r for r in rows if r.get('bench')=='generate_profile']
print('$1', *(f\"{r['tokens_per_s']:.1f} {r['decode_tokens_per_s_per_seq']:.1f}\" for r in g), *(f\"replay {r['graph_replay_ms']} ms {r['graph_replay_bandwidth_fraction']} {json.dumps(r['kernels'])}\" for r in p))"
}
for m in m17:8 m8:4; do
  tag=${m%%:*}; n=${m##*:}; dir=/tmp/$tag
  for round in 1 2; do bench ${tag}_new_$round $dir $n /tmp/x/pub/finetune; bench ${tag}_base_$round $dir $n /tmp/x/base/finetune; done
  bench ${tag}_profile $dir $n /tmp/x/pub/finetune --profile
  bench ${tag}_base_profile $dir $n /tmp/x/base/finetune --profile
done
echo "rc=$rc $(( $(date +%s) - t0 ))s"
rm -rf /tmp/r4/kernel-cache /tmp/r4/decode /tmp/r4/generate; tar -cJf $OUT/run4.tar.xz -C /tmp/r4 .
