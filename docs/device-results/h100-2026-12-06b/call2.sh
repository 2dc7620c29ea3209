#!/usr/bin/env bash
# 2026-12-06 (afternoon), call 2: decode_mlp_tail also as a programmatic dependent launch (cooperative + PDL attributes;
# MlpTailCheck now checks its bits too), and its grid shape (FINETUNE_PERSISTENT_MLP_WARPS / _BLOCKS), each with PDL
# off and on (FINETUNE_PDL), single stream on both shapes, two rounds.
set -u
t0=$(date +%s); el() { echo "[$(( $(date +%s) - t0 ))s]"; }
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
rm -rf /tmp/x && mkdir -p /tmp/x && tar -xJf .device/s1/pub.tar.xz -C /tmp/x
export FINETUNE_KERNEL_CACHE=/tmp/kc2
FT=/tmp/x/pub/finetune; DC=/tmp/x/pub/FineTune.DeviceChecks; R=/tmp/r2; mkdir -p $R
[ -f /tmp/m17/config.json ] || python3 tests/device/hf_generate_bench.py /tmp/m17 --make-model > $R/m17.json 2>&1
timeout 120 $DC decode $R/decode > $R/decode.txt 2>&1; echo "decode rc=$?"; el
grep -E "checks:|FAIL|one launch .* ms" $R/decode.txt | head -30
FINETUNE_PERSISTENT_MLP=1 FINETUNE_PDL=1 timeout 120 $DC generate $R/generate > $R/generate.txt 2>&1; echo "generate (persistent, PDL) rc=$?"; el
grep -E "checks:|FAIL" $R/generate.txt | head -10
bench() { # name model prompts [--profile] -- env...
    local name=$1 model=$2 n=$3 prof=$4; shift 4
    env "$@" timeout 60 $FT bench --generate --device cuda --model $model --batches 1 --prompts $n --prompt-len 64 --new-tokens 64 $prof > "$R/gen_$name.jsonl" 2>&1
    python3 -c "
import json
rows=[json.loads(l) for l in open('$R/gen_$name.jsonl') if l.startswith('{')]
g=[r for r in rows if r.get('bench')=='generate']; p=[r for r in rows if r.get('bench')=='generate_profile']
print('$name', *(f\"{r['tokens_per_s']:.1f} {r['decode_tokens_per_s_per_seq']:.1f}\" for r in g) or ['no result'], *(f\"replay {r['graph_replay_ms']} ms {json.dumps(r['kernels'])[:400]}\" for r in p), flush=True)"
    grep -m2 -iE "error|exception" "$R/gen_$name.jsonl"
}
V="base:FINETUNE_PERSISTENT_MLP=0:FINETUNE_PDL=0 pm:FINETUNE_PERSISTENT_MLP=1:FINETUNE_PDL=0 pdl:FINETUNE_PERSISTENT_MLP=0:FINETUNE_PDL=1 pmpdl:FINETUNE_PERSISTENT_MLP=1:FINETUNE_PDL=1 pmpdl_nodep:FINETUNE_PERSISTENT_MLP=1:FINETUNE_PDL=1:FINETUNE_PERSISTENT_MLP_PDL=0 pm16x1:FINETUNE_PERSISTENT_MLP=1:FINETUNE_PERSISTENT_MLP_WARPS=16:FINETUNE_PERSISTENT_MLP_BLOCKS=1 pm8x2:FINETUNE_PERSISTENT_MLP=1:FINETUNE_PERSISTENT_MLP_BLOCKS=2 pm16x1pdl:FINETUNE_PERSISTENT_MLP=1:FINETUNE_PERSISTENT_MLP_WARPS=16:FINETUNE_PERSISTENT_MLP_BLOCKS=1:FINETUNE_PDL=1 pm8x1:FINETUNE_PERSISTENT_MLP=1:FINETUNE_PERSISTENT_MLP_BLOCKS=1"
for round in 1 2; do
  for v in $V; do name=${v%%:*}; envs=$(echo ${v#*:} | tr ':' ' '); bench m17_${name}_$round /tmp/m17 8 "" $envs; done
  el
done
bench m17_prof_base /tmp/m17 8 --profile FINETUNE_PERSISTENT_MLP=0 FINETUNE_PDL=0
bench m17_prof_pmpdl /tmp/m17 8 --profile FINETUNE_PERSISTENT_MLP=1 FINETUNE_PDL=1
el
[ -f /tmp/m8/config.json ] || timeout 200 python3 tests/device/hf_generate_bench.py /tmp/m8 --make-model --shape llama3-8b > $R/m8.json 2>&1
el; echo model8
for round in 1 2; do
  for v in $V; do case $v in base*|pm:*|pdl:*|pmpdl:*|pm16x1:*) name=${v%%:*}; envs=$(echo ${v#*:} | tr ':' ' '); bench m8_${name}_$round /tmp/m8 4 "" $envs;; esac; done
  el
done
el; echo done
rm -rf $R/decode $R/generate; tar -cJf $OUT/call2.tar.xz -C $R .
