#!/usr/bin/env bash
# The GPU machine's checks in one job (python3 with torch, transformers, peft there; no .NET needed):
#   tests/device/run_checks.sh <finetune single-file binary> <artifacts dir from make_artifacts.sh> <tokenizers dir> <out dir>
# 1. FineTune (CPU backend, fp32) vs transformers/peft on every artifact flavour (hf_equality.py), and the bf16
#    errors of FineTune's CUDA backend and of transformers/peft themselves against that fp32 reference;
# 2. chat templates vs the models' own Jinja templates (templates/check_templates.py; <tokenizers dir>/qwen3, /llama3, /gemma3);
# 3. the example pipeline trained with device: cuda, then its adapter and merged model checked against peft the same way;
# 4. chat with the merged model on the GPU.
set -uo pipefail
ft=$(realpath "$1"); art=$2; tok=$3; out=$4; rc=0
python3 tests/device/hf_equality.py "$art" --json "$out/equality.json" --finetune "$ft" 2>&1 | tee "$out/equality.txt" || rc=1
python3 tests/device/templates/check_templates.py tests/device/templates/cases.json "$tok/qwen3" "$tok/llama3" "$tok/gemma3" >"$out/templates.txt" 2>&1 || rc=1
tail -n 3 "$out/templates.txt"
sed -i 's/device: auto/device: cuda/' pipelines/identity/pipeline.yaml
rm -rf pipelines/identity/.finetune
"$ft" run pipelines/identity 2>&1 | tee "$out/demo_cuda.txt" || rc=1
g=$(mktemp -d)/identity_cuda; mkdir -p "$g"
for s in download:base train:adapter merge:merged; do cp -r "$("$ft" path pipelines/identity --stage "${s%%:*}")" "$g/${s##*:}"; done
python3 -c "import json,random; r=random.Random(11); json.dump([[r.randrange(3,259) for _ in range(n)] for n in (24,17)], open('$g/tokens.json','w'))"
"$ft" forward --model "$g/base" --tokens "$g/tokens.json" --out "$g/ft_base.safetensors"
"$ft" forward --model "$g/base" --adapter "$g/adapter" --grads --tokens "$g/tokens.json" --out "$g/ft_adapter.safetensors"
python3 tests/device/hf_equality.py "$(dirname "$g")" --json "$out/equality_cuda_demo.json" 2>&1 | tee -a "$out/equality.txt" || rc=1
"$ft" chat --device cuda --model "$g/merged" --prompt "Who are you?" 2>&1 | tee "$out/chat.txt"
cp "$("$ft" path pipelines/identity --stage train)/trainer_log.jsonl" "$out/demo_cuda_trainer_log.jsonl" 2>/dev/null
exit $rc
