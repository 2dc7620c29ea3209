"""Equality of FineTune with Hugging Face transformers + peft on the same weights and tokens.

Run on the GPU machine (python3 with torch, transformers, peft), over artifacts that FineTune wrote on any
machine (tests/device/make_artifacts.sh makes them: scratch model directories of each flavour, a trained
LoRA adapter, the merged model, and `finetune forward` outputs of FineTune's CPU backend):

    python3 tests/device/hf_equality.py <artifacts_dir> [--json out.json]

For every flavour directory <artifacts_dir>/<flavour>/ holding base/, adapter/, merged/, tokens.json,
ft_base.safetensors (finetune forward --model base) and ft_adapter.safetensors (finetune forward --model base
--adapter adapter --grads), it checks, in float32:
  (b) transformers loads base/ as it is; logits and loss equal FineTune's;
  (c) peft loads adapter/ on base/; logits equal FineTune's base+adapter logits;
  (d) one backward pass from that same adapter: every lora_A/lora_B gradient equals FineTune's;
  (m) transformers loads merged/; logits equal peft's base+adapter logits.
Errors are relative, ||a - b|| / ||b||, over real (non-padding) positions; exit 1 if one exceeds its bound.
"""
import json
import os
import sys

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

BOUND = 1e-4  # fp32 on both sides


def rel(a, b):
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def batch(rows):
    t = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), t, dtype=torch.long)
    mask = torch.zeros(len(rows), t, dtype=torch.long)
    labels = torch.full((len(rows), t), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = 1
        labels[i, : len(r)] = torch.tensor(r)
    return ids, mask, labels


def run(model, ids, mask, labels):
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    return out.logits.float(), out.loss


def check_flavour(d):
    rows = json.load(open(os.path.join(d, "tokens.json")))
    ids, mask, labels = batch(rows)
    real = mask.bool()
    ft_base = load_file(os.path.join(d, "ft_base.safetensors"))
    ft_ad = load_file(os.path.join(d, "ft_adapter.safetensors"))
    res = {}

    base = AutoModelForCausalLM.from_pretrained(os.path.join(d, "base"), torch_dtype=torch.float32, attn_implementation="eager")
    base.eval()
    with torch.no_grad():
        logits, loss = run(base, ids, mask, labels)
    res["b_logits_rel"] = rel(ft_base["logits"][real], logits[real])
    res["b_loss_abs"] = abs(ft_base["loss"].item() - loss.item())
    res["b_model_class"] = type(base).__name__

    peft_model = PeftModel.from_pretrained(base, os.path.join(d, "adapter"), is_trainable=True)
    peft_model.eval()  # no dropout; gradients still flow
    logits_p, loss_p = run(peft_model, ids, mask, labels)
    res["c_logits_rel"] = rel(ft_ad["logits"][real], logits_p.detach()[real])
    res["c_loss_abs"] = abs(ft_ad["loss"].item() - loss_p.item())
    loss_p.backward()
    worst, n = 0.0, 0
    for name, p in peft_model.named_parameters():
        if p.grad is None or ("lora_" not in name and "modules_to_save" not in name):
            continue
        # FineTune names trainable tensors by their PEFT adapter key (modules_to_save without the wrapper's segment)
        key = "grad." + name.replace(".modules_to_save.default", "").replace(".default", "")
        if key not in ft_ad:
            raise KeyError(f"{d}: FineTune wrote no gradient for {name} (looked for {key})")
        worst = max(worst, rel(ft_ad[key], p.grad.float()))
        n += 1
    res["d_grad_rel_max"] = worst
    res["d_grad_tensors"] = n

    merged = AutoModelForCausalLM.from_pretrained(os.path.join(d, "merged"), torch_dtype=torch.float32, attn_implementation="eager")
    merged.eval()
    with torch.no_grad():
        logits_m, _ = run(merged, ids, mask, labels)
    res["m_logits_rel"] = rel(logits_m[real], logits_p.detach()[real])
    return res


def main():
    root = sys.argv[1]
    out_json = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    results, failed = {}, False
    for flavour in sorted(os.listdir(root)):
        d = os.path.join(root, flavour)
        if not os.path.isfile(os.path.join(d, "tokens.json")):
            continue
        try:
            r = check_flavour(d)
        except Exception as e:  # one flavour's failure must not hide the others' results
            print(f"{flavour:14s} FAIL {type(e).__name__}: {e}", flush=True)
            results[flavour] = {"error": f"{type(e).__name__}: {e}"}
            failed = True
            continue
        results[flavour] = r
        bad = [k for k in ("b_logits_rel", "c_logits_rel", "d_grad_rel_max", "m_logits_rel") if not r[k] <= BOUND]
        bad += [k for k in ("b_loss_abs", "c_loss_abs") if not r[k] <= 1e-4]
        failed |= bool(bad)
        print(f"{flavour:14s} {r['b_model_class']:22s} (b) logits {r['b_logits_rel']:.2e} loss {r['b_loss_abs']:.2e}  "
              f"(c) logits {r['c_logits_rel']:.2e} loss {r['c_loss_abs']:.2e}  (d) grads {r['d_grad_rel_max']:.2e} over {r['d_grad_tensors']}  "
              f"(m) merged {r['m_logits_rel']:.2e}  {'FAIL ' + ','.join(bad) if bad else 'ok'}", flush=True)
    if out_json:
        json.dump(results, open(out_json, "w"), indent=1)
    if not results:
        raise SystemExit(f"no flavour directories with tokens.json under {root}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
