#!/usr/bin/env bash
# Session 2 of 2026-12-03, call 2: the training-memory change (dact over act; the attention backward's workspace in the
# layer's spent MLP activations). Checks: `ops` (AttentionScratchRows: cuDNN with ample / one group's / too small a
# scratch, the flash partials, each the bits of no scratch), `models` (llama, qwen2, gemma: GPU training against the
# CPU). Then the rows with FINETUNE_ATTENTION_SCRATCH=0 (the workspace borrowed, as before) beside the default, one job.
# `run2.sh checks` runs the checks and the 1x8k/llama pairs; `run2.sh rows` the other rows (two device calls).
set -u
PART=${1:-checks}
t0=$(date +%s)
[ -x /tmp/ft/finetune ] || { mkdir -p /tmp/ft && tar -xJf .device/s1/pub.tar.xz -C /tmp/ft; }
FT=/tmp/ft; R=/tmp/r2; mkdir -p $R
export FINETUNE_KERNEL_CACHE=/tmp/kc
if [ $PART = checks ]; then
timeout 200 $FT/FineTune.DeviceChecks ops $R/ops > $R/ops.txt 2>&1; echo "ops rc=$? $(( $(date +%s) - t0 ))s"
grep -E "FAIL" $R/ops.txt | head -20; grep -E "scratch" $R/ops.txt | head -20; tail -2 $R/ops.txt
DEVICECHECKS_MODELS=llama,qwen2,gemma timeout 150 $FT/FineTune.DeviceChecks models $R/models > $R/models.txt 2>&1; echo "models rc=$? $(( $(date +%s) - t0 ))s"
grep -E "FAIL" $R/models.txt | head -10; tail -1 $R/models.txt
fi
b() { # name timeout env... -- args
  local name=$1 to=$2; shift 2; local envs=(); while [ "$1" != -- ]; do envs+=("$1"); shift; done; shift
  env "${envs[@]}" timeout $to $FT/finetune bench --device cuda --matmul-size 0 "$@" 2> $R/bench_$name.err | grep '"train_step"' > $R/bench_$name.jsonl
  python3 -c "
import json
d=json.loads(open('$R/bench_$name.jsonl').read())
print('$name', d['shape'], d['batch'], d['seq'], d['tokens_per_s'], d['peak_gib'], d['mfu'], d['loss'], d.get('fp8_scaling'), d['checkpointing_plan']['est_peak_gib'], [n for n in d['attention']['notes'] if 'spent' in n or 'call' in n])
" 2>&1 | tail -1
}
C="--gradient-checkpointing --steps 4 --warmup 2"
if [ $PART = checks ]; then
b b7_1x8k 60 X=1 -- --shape qwen2.5-7b --batch 1 --seq 8192 $C
b b7_1x8k_borrow 60 FINETUNE_ATTENTION_SCRATCH=0 -- --shape qwen2.5-7b --batch 1 --seq 8192 $C
b l8_1x4k 60 X=1 -- --shape llama3-8b --batch 1 --seq 4096 $C
b l8_1x4k_borrow 60 FINETUNE_ATTENTION_SCRATCH=0 -- --shape llama3-8b --batch 1 --seq 4096 $C
else
b b7_1x2k 60 X=1 -- --shape qwen2.5-7b --batch 1 --seq 2048 $C
b b7_4x2k 60 X=1 -- --shape qwen2.5-7b --batch 4 --seq 2048 $C
b b7_4x2k_borrow 60 FINETUNE_ATTENTION_SCRATCH=0 -- --shape qwen2.5-7b --batch 4 --seq 2048 $C
F8="--shape qwen2.5-7b --batch 4 --seq 2048 --gradient-checkpointing --fp8 --steps 6 --warmup 2"
b fp8_delayed 100 X=1 -- $F8 --fp8-scaling delayed
b fp8_current 100 X=1 -- $F8
b b7_1x16k 120 X=1 -- --shape qwen2.5-7b --batch 1 --seq 16384 --gradient-checkpointing --steps 3 --warmup 1
fi
tar -cJf $OUT/run2_$PART.tar.xz -C $R .
echo "== done $(( $(date +%s) - t0 ))s"
