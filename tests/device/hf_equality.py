"""Equality of FineTune with Hugging Face transformers + peft on the same weights and tokens.

Run on the GPU machine (python3 with torch, transformers, peft), over artifacts that FineTune wrote on any
machine (tests/device/make_artifacts.sh makes them: scratch model directories of each flavour, a trained
LoRA adapter, the merged model, and `finetune forward` outputs of FineTune's CPU backend):

    python3 tests/device/hf_equality.py <artifacts_dir> [--json out.json] [--finetune <binary>]

For every flavour directory <artifacts_dir>/<flavour>/ holding base/, adapter/, merged/, tokens.json,
ft_base.safetensors (finetune forward --model base) and ft_adapter.safetensors (finetune forward --model base
--adapter adapter --grads), it checks, in float32:
  (b) transformers loads base/ as it is; logits and loss equal FineTune's;
  (c) peft loads adapter/ on base/; logits equal FineTune's base+adapter logits;
  (d) one backward pass from that same adapter: the lora_A/lora_B gradients (all together) equal FineTune's;
  (m) transformers loads merged/; logits equal peft's base+adapter logits.
Errors are relative, ||a - b|| / ||b||, over real (non-padding) positions; exit 1 if one exceeds its bound.

With a GPU and `--finetune <published finetune binary>`, it also runs `finetune forward --device cuda --model base
--adapter adapter --grads` (FineTune's training configuration: bf16 weights and activations, fp32 LoRA weights and
gradients) and measures
  (e) bf16 against the fp32 peft reference above: FineTune's CUDA backend, and the peer itself -- transformers +
      peft as LLaMA-Factory trains (bf16 model, fp32 adapter, torch.autocast bf16; sdpa and eager attention) -- on
      the same weights and tokens (4 batches, errors averaged). Logits, loss and all LoRA gradients together.
      FineTune must stay within 1e-2, or, where bf16 itself cannot, within the peer's own band: 1.5x the larger of
      its two attention implementations' errors.
"""
import json
import os
import random
import subprocess
import sys
import tempfile

import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

BOUND = 1e-4  # fp32 on both sides
BF16_BOUND = 1e-2
BF16_BATCHES = 4
BF16_BAND = 1.5
PEER_ATTENTION = ("sdpa", "eager")
FINETUNE = None  # --finetune <binary>: enables (e)


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
    ours, theirs = {}, {}
    for name, p in peft_model.named_parameters():
        if p.grad is None or ("lora_" not in name and "modules_to_save" not in name):
            continue
        # FineTune names trainable tensors by their PEFT adapter key (modules_to_save without the wrapper's segment)
        key = "grad." + name.replace(".modules_to_save.default", "").replace(".default", "")
        if key not in ft_ad:
            raise KeyError(f"{d}: FineTune wrote no gradient for {name} (looked for {key})")
        ours[name], theirs[name] = ft_ad[key].float(), p.grad.float()
    n = len(theirs)
    # The check is over all gradients together (as an optimizer sees them); the worst single tensor is reported too:
    # a tensor whose gradient is a tiny cancellation residue can show a larger relative error in any precision.
    res["d_grad_rel"] = cat_rel(ours, theirs)
    res["d_grad_rel_max"] = max(rel(ours[k], theirs[k]) for k in theirs)
    res["d_grad_tensors"] = n

    if FINETUNE and torch.cuda.is_available():
        res.update(bf16_errors(d, rows, peft_model))

    merged = AutoModelForCausalLM.from_pretrained(os.path.join(d, "merged"), torch_dtype=torch.float32, attn_implementation="eager")
    merged.eval()
    with torch.no_grad():
        logits_m, _ = run(merged, ids, mask, labels)
    res["m_logits_rel"] = rel(logits_m[real], logits_p.detach()[real])
    return res


def cat_rel(grads, ref):
    keys = sorted(ref)
    return rel(torch.cat([grads[k].flatten() for k in keys]), torch.cat([ref[k].flatten() for k in keys]))


def grads_of(model, cpu=True):
    return {k: (p.grad.detach().float().cpu() if cpu else p.grad.detach().float()) for k, p in model.named_parameters()
            if p.grad is not None and "lora_" in k}


def bf16_errors(d, rows0, ref_model):
    """(e): the peer's own bf16 error (with each attention implementation LLaMA-Factory users run: sdpa and eager) and
    FineTune's CUDA bf16 error, all against the fp32 peft reference, averaged over BF16_BATCHES token batches (the first
    is tokens.json; one batch's gradient error swings with its conditioning)."""
    dev = "cuda"
    peers = {}
    for attn in PEER_ATTENTION:
        base = AutoModelForCausalLM.from_pretrained(os.path.join(d, "base"), torch_dtype=torch.bfloat16, attn_implementation=attn).to(dev)
        peers[attn] = PeftModel.from_pretrained(base, os.path.join(d, "adapter"), is_trainable=True)  # adapter kept fp32
        peers[attn].eval()
    vocab = ref_model.get_base_model().config.vocab_size
    per = []
    with tempfile.TemporaryDirectory() as tmp:
        for b in range(BF16_BATCHES):
            r = random.Random(100 + b)
            rows = rows0 if b == 0 else [[r.randrange(3, vocab) for _ in range(r.randrange(16, 65))] for _ in range(4)]
            ids, mask, labels = batch(rows)
            real = mask.bool()
            ref_model.zero_grad()
            ref_logits, ref_loss = run(ref_model, ids, mask, labels)
            ref_loss.backward()
            ref_grads = grads_of(ref_model)
            ref_logits = ref_logits.detach()
            row = {}
            for attn, model in peers.items():
                model.zero_grad()
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    out = model(input_ids=ids.to(dev), attention_mask=mask.to(dev), labels=labels.to(dev))
                out.loss.backward()
                row[f"hf_{attn}_logits"] = rel(out.logits.detach().float().cpu()[real], ref_logits[real])
                row[f"hf_{attn}_loss"] = abs(out.loss.item() - ref_loss.item()) / abs(ref_loss.item())
                row[f"hf_{attn}_grads"] = cat_rel(grads_of(model), ref_grads)
            tok, res_file = os.path.join(tmp, f"tokens{b}.json"), os.path.join(tmp, f"ft{b}.safetensors")
            json.dump(rows, open(tok, "w"))
            subprocess.run([FINETUNE, "forward", "--device", "cuda", "--model", os.path.join(d, "base"), "--adapter",
                            os.path.join(d, "adapter"), "--grads", "--tokens", tok, "--out", res_file], check=True, stdout=subprocess.DEVNULL)
            ft = load_file(res_file)
            ft_grads = {k: ft["grad." + k.replace(".default", "")].float() for k in ref_grads}
            row["ft_logits"] = rel(ft["logits"].float()[real], ref_logits[real])
            row["ft_loss"] = abs(ft["loss"].item() - ref_loss.item()) / abs(ref_loss.item())
            row["ft_grads"] = cat_rel(ft_grads, ref_grads)
            per.append(row)
    del peers
    torch.cuda.empty_cache()
    res = {"e_batches": per}
    for who in ["ft"] + [f"hf_{a}" for a in PEER_ATTENTION]:
        for w in ("logits", "loss", "grads"):
            res[f"e_{who}_bf16_{w}_rel"] = sum(p[f"{who}_{w}"] for p in per) / len(per)
    return res


def bf16_bound(r, what):
    """bf16 arithmetic has no single right answer: the bound is the peer's own band (the larger of its attention
    implementations' errors) widened by half, and never below 1e-2."""
    return max(BF16_BOUND, BF16_BAND * max(r[f"e_hf_{a}_bf16_{what}_rel"] for a in PEER_ATTENTION))


def main():
    root = sys.argv[1]
    global FINETUNE
    out_json = sys.argv[sys.argv.index("--json") + 1] if "--json" in sys.argv else None
    FINETUNE = os.path.realpath(sys.argv[sys.argv.index("--finetune") + 1]) if "--finetune" in sys.argv else None
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
        bad = [k for k in ("b_logits_rel", "c_logits_rel", "d_grad_rel", "m_logits_rel") if not r[k] <= BOUND]
        bad += [k for k in ("b_loss_abs", "c_loss_abs") if not r[k] <= 1e-4]
        if "e_ft_bf16_grads_rel" in r:
            bad += [f"e_ft_bf16_{w}_rel" for w in ("logits", "loss", "grads") if not r[f"e_ft_bf16_{w}_rel"] <= bf16_bound(r, w)]
        failed |= bool(bad)
        print(f"{flavour:14s} {r['b_model_class']:22s} (b) logits {r['b_logits_rel']:.2e} loss {r['b_loss_abs']:.2e}  "
              f"(c) logits {r['c_logits_rel']:.2e} loss {r['c_loss_abs']:.2e}  (d) grads {r['d_grad_rel']:.2e} over {r['d_grad_tensors']} (worst tensor {r['d_grad_rel_max']:.2e})  "
              f"(m) merged {r['m_logits_rel']:.2e}  {'FAIL ' + ','.join(bad) if bad else 'ok'}", flush=True)
        if "e_ft_bf16_grads_rel" in r:
            print(f"{'':14s} (e) bf16 vs fp32 reference, mean of {len(r['e_batches'])} batches: " + "  ".join(
                f"{w} FineTune {r[f'e_ft_bf16_{w}_rel']:.2e} / HF+peft sdpa {r[f'e_hf_sdpa_bf16_{w}_rel']:.2e}, eager "
                f"{r[f'e_hf_eager_bf16_{w}_rel']:.2e} (bound {bf16_bound(r, w):.1e})" for w in ("logits", "loss", "grads")), flush=True)
    if out_json:
        json.dump(results, open(out_json, "w"), indent=1)
    if not results:
        raise SystemExit(f"no flavour directories with tokens.json under {root}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
