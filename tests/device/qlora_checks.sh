#!/usr/bin/env bash
# QLoRA against transformers + peft on the dequantized base (issue 16):
#   tests/device/qlora_checks.sh make <artifacts dir>     any machine with .NET (or FINETUNE=<binary> DEVICECHECKS=<binary>)
#   tests/device/qlora_checks.sh check <artifacts dir> [<finetune binary>] [<out dir>]   the GPU machine (torch, transformers, peft)
# make: for qwen3 and llama scratch models, a LoRA adapter trained with quantization_bit: 4 (NF4, double quantization)
# on the CPU backend; base/ = that model with every decoder linear quantized then dequantized (f32: the weights the
# adapter trained against), merged/ = the merge stage's output; ft_base / ft_adapter = `finetune forward
# --quantization-bit 4` on the original base (FineTune holds it 4-bit and dequantizes per product), with --grads.
# check: hf_equality.py over those directories: transformers/peft on base/ must give FineTune's QLoRA logits, loss and
# LoRA gradients (fp32 bound 1e-4); with the binary also the CUDA backend's bf16 errors (e), on base/ as it is; then
# bnb_reference.py on FineTune's codes (bitsandbytes compared too when it imports).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
mode=$1; art=$(mkdir -p "$2" && cd "$2" && pwd)
if [ "$mode" = check ]; then
  ft=${3:-}; out=${4:-$art}; rc=0
  python3 "$root/tests/device/hf_equality.py" "$art" --json "$out/qlora_equality.json" ${ft:+--finetune "$ft"} 2>&1 | tee "$out/qlora_equality.txt" || rc=1
  python3 "$root/tests/device/bnb_reference.py" "$art/quant" --json "$out/bnb_reference.json" 2>&1 | tee "$out/bnb_reference.txt" || rc=1
  exit $rc
fi
if [ -n "${FINETUNE:-}" ]; then
  bin=$(realpath "$FINETUNE"); ft() { "$bin" "$@"; }
  checks=$(realpath "$DEVICECHECKS"); dc() { "$checks" "$@"; }
else
  dotnet build "$root/src/FineTune.Cli" -c Release -v q -nologo >/dev/null
  dotnet build "$root/tests/device/FineTune.DeviceChecks" -c Release -v q -nologo >/dev/null
  ft() { dotnet "$root/src/FineTune.Cli/bin/Release/net10.0/finetune.dll" "$@"; }
  dc() { dotnet "$root/tests/device/FineTune.DeviceChecks/bin/Release/net10.0/FineTune.DeviceChecks.dll" "$@"; }
fi
for spec in "qlora-qwen3:qwen3:false" "qlora-llama:llama:false"; do
  IFS=: read -r flavour arch tied <<<"$spec"
  work="$art/$flavour/pipeline"; rm -rf "$art/$flavour"; mkdir -p "$work"
  cat >"$work/pipeline.yaml" <<YAML
name: qlora-$flavour
model:
  source: scratch
  scratch: {architecture: $arch, hidden_size: 128, intermediate_size: 256, num_hidden_layers: 2, num_attention_heads: 4,
            num_key_value_heads: 2, head_dim: 32, tie_word_embeddings: $tied, seed: 7}
data: {dataset_dir: $root/data, dataset: [identity], template: qwen, placeholders: {name: Eq, author: FineTune}}
stages:
  download: {}
  register: {}
  split: {val_size: 0.1, seed: 1, cutoff_len: 128}
  train: {device: cpu, finetuning_type: lora, quantization_bit: 4, lora_rank: 4, lora_alpha: 8, lora_target: all,
          learning_rate: 1.0e-2, max_steps: 20, per_device_train_batch_size: 4, lr_scheduler_type: constant, logging_steps: 5, seed: 3}
  merge: {export_dtype: float32}
YAML
  ft run "$work" >/dev/null
  original="$art/$flavour/original"
  cp -r "$(ft path "$work" --stage download)" "$original"
  cp -r "$(ft path "$work" --stage train)" "$art/$flavour/adapter"
  cp -r "$(ft path "$work" --stage merge)" "$art/$flavour/merged"
  dc quant-base "$original" "$art/$flavour/base"
  rm -rf "$work"
  python3 -c "import json,random; r=random.Random(11); json.dump([[r.randrange(3,259) for _ in range(n)] for n in (24,17)], open('$art/$flavour/tokens.json','w'))"
  ft forward --quantization-bit 4 --model "$original" --tokens "$art/$flavour/tokens.json" --out "$art/$flavour/ft_base.safetensors"
  ft forward --quantization-bit 4 --model "$original" --adapter "$art/$flavour/adapter" --grads --tokens "$art/$flavour/tokens.json" --out "$art/$flavour/ft_adapter.safetensors"
done
dc quant "$art/quant"
du -sh "$art"
