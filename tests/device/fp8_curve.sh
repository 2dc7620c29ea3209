#!/usr/bin/env bash
# fp8 against bf16 on a real training curve (issue 13): the identity demo (pipelines/identity: real data, the Qwen3
# tokenizer, LoRA r16 on all seven projections plus norm/lm_head) on a scratch model of the qwen3-0.6b bench shape
# (hidden 1024, intermediate 3072, 28 layers, 16 heads, 8 KV heads, head_dim 128), trained twice on the GPU with the same
# seed and data order: with the frozen base in bf16, with stages.train.fp8: true (current scaling) and with fp8_scaling:
# delayed (Transformer Engine's DelayedScaling, 1024 passes of amax history). Prints the loss curves side by side, each
# fp8 curve's relative difference from bf16, and the throughput of each run. Runs on the GPU machine (python3 with PyYAML, which
# transformers brings; no .NET needed):
#   tests/device/fp8_curve.sh <finetune single-file binary> <out dir> [epochs (default 10)] [layers (default 28)]
set -euo pipefail
ft=$(realpath "$1"); out=$(mkdir -p "$2" && cd "$2" && pwd); epochs=${3:-10}; layers=${4:-28}
root=$(cd "$(dirname "$0")/../.." && pwd)
work=$(mktemp -d)
for mode in bf16 fp8 fp8_delayed; do
  mkdir -p "$work/$mode"
  python3 - "$root/pipelines/identity/pipeline.yaml" "$work/$mode/pipeline.yaml" "$root/data" "$mode" "$epochs" "$layers" <<'PY'
import sys, yaml
src, dst, data, mode, epochs, layers = sys.argv[1:]
p = yaml.safe_load(open(src))
p["name"] = f"fp8_curve_{mode}"
p["model"]["scratch"].update(hidden_size=1024, intermediate_size=3072, num_hidden_layers=int(layers), num_attention_heads=16,
                             num_key_value_heads=8, head_dim=128)
p["data"]["dataset_dir"] = data
t = p["stages"]["train"]
t.update(device="cuda", learning_rate=1.0e-3, num_train_epochs=int(epochs), logging_steps=1, plot_loss=False)
if mode.startswith("fp8"):
    t["fp8"] = True
if mode == "fp8_delayed":
    t["fp8_scaling"] = "delayed"
for k in ("eval", "merge", "export"):
    p["stages"].pop(k, None)
yaml.safe_dump(p, open(dst, "w"), sort_keys=False)
PY
  "$ft" run "$work/$mode" 2>&1 | tee "$out/run_$mode.txt"
  dir=$("$ft" path "$work/$mode" --stage train)
  cp "$dir/trainer_log.jsonl" "$out/trainer_log_$mode.jsonl"
  cp "$dir/train_results.json" "$out/train_results_$mode.json" 2>/dev/null || true
done
python3 - "$out" <<'PY'
import json, sys, os
out = sys.argv[1]
def curve(mode):
    rows = [json.loads(l) for l in open(os.path.join(out, f"trainer_log_{mode}.jsonl")) if l.strip()]
    return {r["current_steps"]: r["loss"] for r in rows if r.get("loss") is not None}
b, f, d = curve("bf16"), curve("fp8"), curve("fp8_delayed")
steps = sorted(set(b) & set(f) & set(d))
print(f"{'step':>5} {'bf16 loss':>10} {'fp8 loss':>10} {'rel diff':>9} {'delayed':>10} {'rel diff':>9}")
for s in steps:
    print(f"{s:>5} {b[s]:>10.4f} {f[s]:>10.4f} {(f[s] - b[s]) / b[s]:>+9.2%} {d[s]:>10.4f} {(d[s] - b[s]) / b[s]:>+9.2%}")
tail = steps[-max(1, len(steps) // 10):]
mean = lambda c: sum(c[s] for s in tail) / len(tail)
print(f"last {len(tail)} steps: mean loss bf16 {mean(b):.4f}, fp8 {mean(f):.4f} ({(mean(f) - mean(b)) / mean(b):+.2%}), "
      f"fp8 delayed {mean(d):.4f} ({(mean(d) - mean(b)) / mean(b):+.2%})")
for mode in ("bf16", "fp8", "fp8_delayed"):
    p = os.path.join(out, f"train_results_{mode}.json")
    if os.path.exists(p):
        r = json.load(open(p))
        print(f"{mode}: train_loss {r.get('train_loss')}, {r.get('train_tokens_per_second', r.get('train_samples_per_second'))} tokens/s, runtime {r.get('train_runtime')} s")
PY
