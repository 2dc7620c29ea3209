#!/usr/bin/env bash
# Preference objectives, FineTune vs an independent PyTorch reference (transformers + peft, fp32), on the GPU machine:
#   tests/device/pref_checks.sh <finetune binary> <base model dir> <adapter dir> <out dir>
# For each objective: one step on the same pairs (random ids of the model's vocabulary), FineTune on the CPU backend
# (fp32) and on CUDA (bf16), pref_reference.py in fp32; pref_compare.py checks loss, metrics and every LoRA gradient
# (1e-4 relative for fp32; the CUDA line is reported with a bf16 tolerance of 5e-2).
set -uo pipefail
ft=$(realpath "$1"); base=$2; adapter=$3; out=$4; rc=0
mkdir -p "$out"; : >"$out/summary.txt"
python3 - "$base" "$out/batch.json" "$out/kto.json" <<'PY'
import json, random, sys
vocab = json.load(open(sys.argv[1] + "/config.json"))["vocab_size"]
r = random.Random(5)
ids = lambda n: [r.randrange(3, vocab) for _ in range(n)]
pairs = [{"prompt": ids(6 + i), "chosen": ids(5 + 2 * i), "rejected": ids(9 - i)} for i in range(4)]
json.dump({"pairs": pairs}, open(sys.argv[2], "w"))
ex = [{"prompt": p["prompt"], "completion": p["chosen"] if i % 2 == 0 else p["rejected"], "kto_tag": i % 2 == 0,
       "kl_completion": pairs[(i + 1) % 4]["chosen"]} for i, p in enumerate(pairs)]
json.dump({"examples": ex}, open(sys.argv[3], "w"))
PY
# rm: the adapter with a random value head beside it (FineTune loads value_head.safetensors from the adapter directory).
rma="$out/rm_adapter"; rm -rf "$rma"; cp -r "$adapter" "$rma"
python3 - "$base" "$rma/value_head.safetensors" <<'PY'
import json, sys, torch
from safetensors.torch import save_file
h = json.load(open(sys.argv[1] + "/config.json"))["hidden_size"]
g = torch.Generator().manual_seed(3)
save_file({"v_head.summary.weight": torch.randn(1, h, generator=g) * h ** -0.5, "v_head.summary.bias": torch.randn(1, generator=g)}, sys.argv[2])
PY
run() {  # name, stage, batch, adapter, extra args...
  local name=$1 stage=$2 batch=$3 ad=$4; shift 4
  local vh=(); [ "$stage" = rm ] && vh=(--value-head "$ad/value_head.safetensors")
  python3 tests/device/pref_reference.py --model "$base" --adapter "$ad" "${vh[@]}" --batch "$batch" --stage "$stage" "$@" --out "$out/$name.ref.json" >"$out/$name.ref.txt" 2>&1 || { echo "$name: reference failed"; tail -5 "$out/$name.ref.txt"; rc=1; return; }
  for dev in cpu cuda; do
    "$ft" forward --model "$base" --adapter "$ad" --objective "$stage" --batch "$batch" --device $dev "$@" --out "$out/$name.$dev.json" >"$out/$name.$dev.txt" 2>&1 || { echo "$name $dev: finetune failed"; tail -5 "$out/$name.$dev.txt"; rc=1; continue; }
    tol=1e-4; [ $dev = cuda ] && tol=5e-2
    echo "== $name ($dev, tolerance $tol)" | tee -a "$out/summary.txt"
    python3 tests/device/pref_compare.py "$out/$name.$dev.json" "$out/$name.ref.json" --tol $tol | tee -a "$out/summary.txt" || { [ $dev = cpu ] && rc=1; }
  done
}
run dpo_sigmoid dpo "$out/batch.json" "$adapter" --pref-beta 0.1
run dpo_sigmoid_smooth_ftx dpo "$out/batch.json" "$adapter" --pref-beta 0.5 --dpo-label-smoothing 0.1 --pref-ftx 0.3
run dpo_ipo dpo "$out/batch.json" "$adapter" --pref-loss ipo --pref-beta 0.1
run dpo_hinge dpo "$out/batch.json" "$adapter" --pref-loss hinge --pref-beta 0.1
run orpo dpo "$out/batch.json" "$adapter" --pref-loss orpo --pref-beta 0.1
run simpo dpo "$out/batch.json" "$adapter" --pref-loss simpo --pref-beta 2.0 --simpo-gamma 0.5
run kto kto "$out/kto.json" "$adapter" --pref-beta 0.1 --kto-chosen-weight 1.5 --kto-rejected-weight 0.8
run rm rm "$out/batch.json" "$rma"
exit $rc
