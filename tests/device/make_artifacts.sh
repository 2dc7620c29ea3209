#!/usr/bin/env bash
# Makes the artifacts tests/device/hf_equality.py compares (runs here, on any machine with .NET; CPU backend):
# for each flavour a scratch model, a LoRA adapter trained for a few steps (so B is not zero), the merged model,
# and FineTune's own logits / loss / LoRA gradients on fixed random tokens (`finetune forward`).
#   [FLAVOURS=a,b] tests/device/make_artifacts.sh <out_dir>
# With FINETUNE=<a published finetune binary> it uses that instead of building (the GPU machine has no .NET SDK).
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mkdir -p "$1" && cd "$1" && pwd)
if [ -n "${FINETUNE:-}" ]; then
  bin=$(realpath "$FINETUNE"); ft() { "$bin" "$@"; }
else
  dotnet build "$root/src/FineTune.Cli" -c Release -v q -nologo >/dev/null
  ft() { dotnet "$root/src/FineTune.Cli/bin/Release/net10.0/finetune.dll" "$@"; }
fi
stage_dir() { ft path "$1" --stage "$2"; }

# flavour:architecture:tied:hidden:intermediate:head_dim[:scratch keys] -- the h256 ones have head_dim 64, so that on a GPU they
# take the flash-attention kernels (the bf16 comparison (e) in hf_equality.py). phi3: fused qkv_proj / gate_up_proj,
# PEFT's LoRA on the fused modules (peft must reproduce FineTune's adapter logits and gradients under those names).
# gemma2 / gemma3: a window of 8 (the rows are 24 and 17 tokens), query_pre_attn_scalar ≠ head_dim and soft-caps that
# bend the scores (gemma2), one local and one global layer with their own rope bases (gemma3).
gemma_keys() {
  case "$1" in
    gemma2*) echo ", sliding_window: 8, query_pre_attn_scalar: 24, attn_logit_softcapping: 5.0, final_logit_softcapping: 3.0" ;;
    gemma3*) echo ", sliding_window: 8, query_pre_attn_scalar: 24, layer_types: [sliding_attention, full_attention], rope_local_base_freq: 100.0" ;;
    *) echo "" ;;
  esac
}
# Mixtures of experts (transformers 5 fuses the hub's per-expert tensors on load): qwen3_moe renormalised, qwen3_moe-dense
# with layer 0 dense (decoder_sparse_step 2) and norm_topk_prob false, mixtral. LoRA all = the attention projections, plus
# gate/up/down where a layer is dense (LLaMA-Factory's nn.Linear names) -- which PEFT on transformers 5 turns into the
# experts' target_parameters gate_up_proj / down_proj, so qwen3_moe-dense trains the experts (not the dense MLP), and so
# does FineTune. The -experts flavours name the expert projections explicitly (qwen3_moe gate_proj/up_proj/down_proj,
# mixtral w1/w3/w2): PEFT's ParamWrapper on the experts, FineTune's adapter written with target_parameters. The -router
# flavours name the router, gate (transformers 5's TopKRouter: PEFT's conversion makes it target_parameters gate.weight),
# mixtral-router beside the experts. Scratch keys are key=value,… (written as YAML).
lora_target_of() {
  case "$1" in
    qwen3_moe-experts) echo "[q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj]" ;;
    mixtral-experts) echo "[q_proj, k_proj, v_proj, o_proj, w1, w3, w2]" ;;
    qwen3_moe-router) echo "[q_proj, k_proj, v_proj, o_proj, gate]" ;;
    mixtral-router) echo "[q_proj, v_proj, gate, w1, w3, w2]" ;;
    *) echo "all" ;;
  esac
}
for spec in "llama:llama:false:64:160:16" "qwen2:qwen2:true:64:160:16" "qwen3:qwen3:false:64:160:16" \
            "llama-h256:llama:false:256:512:64" "qwen2-h256:qwen2:true:256:512:64" "qwen3-h256:qwen3:false:256:512:64" \
            "mistral:mistral:false:64:160:16" "phi3:phi3:false:64:160:16" "phi3-h256:phi3:false:256:512:64" \
            "gemma2:gemma2:true:64:160:16" "gemma3:gemma3_text:true:64:160:16" "gemma3-h256:gemma3_text:false:256:512:64" \
            "qwen3_moe:qwen3_moe:false:64:160:16:num_experts=4,num_experts_per_tok=2,moe_intermediate_size=96" \
            "qwen3_moe-dense:qwen3_moe:false:64:160:16:num_experts=4,num_experts_per_tok=2,moe_intermediate_size=96,decoder_sparse_step=2,norm_topk_prob=false" \
            "qwen3_moe-h256:qwen3_moe:false:256:512:64:num_experts=8,num_experts_per_tok=2,moe_intermediate_size=128" \
            "mixtral:mixtral:false:64:160:16:num_local_experts=4,num_experts_per_tok=2" \
            "qwen3_moe-experts:qwen3_moe:false:64:160:16:num_experts=4,num_experts_per_tok=2,moe_intermediate_size=96" \
            "mixtral-experts:mixtral:false:64:160:16:num_local_experts=4,num_experts_per_tok=2" \
            "qwen3_moe-router:qwen3_moe:false:64:160:16:num_experts=4,num_experts_per_tok=2,moe_intermediate_size=96" \
            "mixtral-router:mixtral:false:64:160:16:num_local_experts=4,num_experts_per_tok=2"; do
  IFS=: read -r flavour arch tied hidden inter head_dim keys <<<"$spec"
  # FLAVOURS=llama-h256,qwen2-h256 makes only those (a short device run checks the kernels it changed on them).
  [ -z "${FLAVOURS:-}" ] || [[ ",$FLAVOURS," == *",$flavour,"* ]] || continue
  extra=""; [ -n "${keys:-}" ] && extra=", $(sed 's/=/: /g; s/,/, /g' <<<"$keys")"
  work="$out/$flavour/pipeline"; rm -rf "$out/$flavour"; mkdir -p "$work"
  cat >"$work/pipeline.yaml" <<YAML
name: equality-$flavour
model:
  source: scratch
  scratch: {architecture: $arch, hidden_size: $hidden, intermediate_size: $inter, num_hidden_layers: 2, num_attention_heads: 4,
            num_key_value_heads: 2, head_dim: $head_dim, tie_word_embeddings: $tied, seed: 7$(gemma_keys "$flavour")$extra}
data: {dataset_dir: $root/data, dataset: [identity], template: qwen, placeholders: {name: Eq, author: FineTune}}
stages:
  download: {}
  register: {}
  split: {val_size: 0.1, seed: 1, cutoff_len: 128}
  train: {device: cpu, finetuning_type: lora, lora_rank: 4, lora_alpha: 8, lora_target: $(lora_target_of "$flavour"), learning_rate: 1.0e-2,
          max_steps: 20, per_device_train_batch_size: 4, lr_scheduler_type: constant, logging_steps: 5, seed: 3}
  merge: {export_dtype: float32}
YAML
  ft run "$work" >/dev/null
  cp -r "$(stage_dir "$work" download)" "$out/$flavour/base"
  cp -r "$(stage_dir "$work" train)" "$out/$flavour/adapter"
  cp -r "$(stage_dir "$work" merge)" "$out/$flavour/merged"
  rm -rf "$work"
  python3 -c "import json,random; r=random.Random(11); json.dump([[r.randrange(3,259) for _ in range(n)] for n in (24,17)], open('$out/$flavour/tokens.json','w'))"
  ft forward --model "$out/$flavour/base" --tokens "$out/$flavour/tokens.json" --out "$out/$flavour/ft_base.safetensors"
  ft forward --model "$out/$flavour/base" --adapter "$out/$flavour/adapter" --grads --tokens "$out/$flavour/tokens.json" --out "$out/$flavour/ft_adapter.safetensors"
done
du -sh "$out"
