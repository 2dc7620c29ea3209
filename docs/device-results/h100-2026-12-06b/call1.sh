#!/usr/bin/env bash
# 2026-12-06 (afternoon session), call 1: the persistent MLP tail (decode.cu decode_mlp_tail: o_proj + residual,
# ln2 + gate/up + SwiGLU, down_proj + residual as one cooperative launch with grid barriers; FINETUNE_PERSISTENT_MLP=1).
# decode checks (MlpTailCheck: bits against the three kernels), generate checks with it on, then single stream on the
# Qwen3-1.7B and Llama-3-8B shapes, off and on in turn, twice, and a --profile run each.
set -u
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 ))s]"; }
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm,clocks.max.mem --format=csv,noheader
rm -rf /tmp/x && mkdir -p /tmp/x && tar -xJf .device/s1/pub.tar.xz -C /tmp/x
export FINETUNE_KERNEL_CACHE=/tmp/kc
FT=/tmp/x/pub/finetune; DC=/tmp/x/pub/FineTune.DeviceChecks; R=/tmp/r1; mkdir -p $R
[ -f /tmp/m17/config.json ] || python3 tests/device/hf_generate_bench.py /tmp/m17 --make-model > $R/m17.json 2>&1
el; echo model17
timeout 120 $DC decode $R/decode > $R/decode.txt 2>&1; echo "decode rc=$?"; el
grep -E "checks:|FAIL|one launch .* ms|decode_mlp_tail:" $R/decode.txt | head -30
FINETUNE_PERSISTENT_MLP=1 timeout 120 $DC generate $R/generate > $R/generate.txt 2>&1; echo "generate (persistent) rc=$?"; el
grep -E "checks:|FAIL" $R/generate.txt | head -10
bench() { # name model prompts [--profile] -- env...
    local name=$1 model=$2 n=$3 prof=$4; shift 4
    env "$@" timeout 60 $FT bench --generate --device cuda --model $model --batches 1 --prompts $n --prompt-len 64 --new-tokens 64 $prof > "$R/gen_$name.jsonl" 2>&1
    python3 -c "
import json
rows=[json.loads(l) for l in open('$R/gen_$name.jsonl') if l.startswith('{')]
g=[r for r in rows if r.get('bench')=='generate']; p=[r for r in rows if r.get('bench')=='generate_profile']
print('$name', *(f\"{r['tokens_per_s']:.1f} {r['decode_tokens_per_s_per_seq']:.1f}\" for r in g) or ['no result'], *(f\"replay {r['graph_replay_ms']} ms {r['graph_replay_bandwidth_fraction']} {json.dumps(r['kernels'])[:700]}\" for r in p), flush=True)"
    grep -m2 -iE "error|exception" "$R/gen_$name.jsonl"
}
for round in 1 2; do
  bench m17_off_$round /tmp/m17 8 "" FINETUNE_PERSISTENT_MLP=0
  bench m17_on_$round /tmp/m17 8 "" FINETUNE_PERSISTENT_MLP=1
done
bench m17_prof_off /tmp/m17 8 --profile FINETUNE_PERSISTENT_MLP=0
bench m17_prof_on /tmp/m17 8 --profile FINETUNE_PERSISTENT_MLP=1
el
[ -f /tmp/m8/config.json ] || timeout 200 python3 tests/device/hf_generate_bench.py /tmp/m8 --make-model --shape llama3-8b > $R/m8.json 2>&1
el; echo model8
for round in 1 2; do
  bench m8_off_$round /tmp/m8 4 "" FINETUNE_PERSISTENT_MLP=0
  bench m8_on_$round /tmp/m8 4 "" FINETUNE_PERSISTENT_MLP=1
done
bench m8_prof_on /tmp/m8 4 --profile FINETUNE_PERSISTENT_MLP=1
el; echo done
rm -rf $R/decode $R/generate; tar -cJf $OUT/call1.tar.xz -C $R .
