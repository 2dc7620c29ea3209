"""PyTorch reference for FineTune's preference objectives (DPO/IPO/hinge, ORPO, SimPO, KTO, pairwise RM).

Written from the papers' formulas (and LLaMA-Factory's choices where it makes them: length-averaged log-probs for
ipo/orpo/simpo, its pref_ftx terms), independently of FineTune's C# code (src/FineTune.Training/Objectives/), so the
lead can compare FineTune's loss, metrics and LoRA gradients with it on the GPU machine (python3 with torch,
transformers, peft), in float32:

    python3 tests/device/pref_reference.py --model <hf dir> [--adapter <peft dir>] [--value-head <file>] \
        --batch batch.json --stage dpo|kto|rm [--pref-loss sigmoid|hinge|ipo|orpo|simpo] [--pref-beta 0.1] \
        [--pref-ftx 0] [--dpo-label-smoothing 0] [--simpo-gamma 0.5] [--kto-chosen-weight 1] \
        [--kto-rejected-weight 1] [--full-grads] --out result.json
    python3 tests/device/pref_reference.py --self-test      # the loss formulas on tiny tensors, no model needed

batch.json holds token ids (the prompt with its template, the answers with their end-of-turn tokens):
    dpo, rm: {"pairs": [{"prompt": [ids], "chosen": [ids], "rejected": [ids]}, ...]}
    kto:     {"examples": [{"prompt": [ids], "completion": [ids], "kto_tag": true|false,
                            "kl_completion": [ids]}, ...]}
kl_completion is the mismatched answer that KTO's KL estimate scores after this prompt; left out, example i takes
example N-1-i's completion (LLaMA-Factory pairs them in reverse order).

All examples form ONE step: the loss is the mean over them. Each sequence runs alone (no padding); a log-prob is the
sum of log_softmax(logits[t-1])[token t] over the answer's tokens. The reference is the same model with the adapter
disabled (peft's disable_adapter()), under no_grad; without --adapter it is the model itself, as it starts, and the
gradients are those of every trainable parameter. KTO's KL sequences run under no_grad (the estimate is detached).
rm needs --value-head: a safetensors file with v_head.summary.weight [1, hidden] and v_head.summary.bias [1], as
LLaMA-Factory saves value_head.safetensors; a score is that linear map of the last layer's (normed) hidden state at
the last token, and the value head is trained (its gradients are reported too).

result.json: {"loss", "metrics", "examples" (per example: log-prob sums, token counts, rewards or scores),
"gradients": {name: {"numel", "norm", "first": first 8 values} (or "values": all, with --full-grads)},
"grad_norm": the norm of all gradients together}.
"""
import argparse
import json
import math
import sys

import torch
import torch.nn.functional as F

ODDS_CLAMP = -1e-6  # ORPO: average log-probs are clamped to <= -1e-6 inside log(1 - e^x), as FineTune does


# ---- the objectives, on 1-D tensors of per-example values -------------------------------------------------------

def log1mexp(x):
    """log(1 - e^x) for x < 0 (Maechler 2012): log(-expm1(x)) near 0, log1p(-e^x) further out."""
    return torch.where(x > -math.log(2), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def pair_metrics(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps):
    return {
        "rewards/chosen": chosen_rewards.mean().item(),
        "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/accuracies": (chosen_rewards > rejected_rewards).double().mean().item(),
        "rewards/margins": (chosen_rewards - rejected_rewards).mean().item(),
        "logps/chosen": chosen_logps.mean().item(),
        "logps/rejected": rejected_logps.mean().item(),
    }


def dpo_objective(s, pc, pr, nc, nr, rc=None, rr=None):
    """stage dpo: pc/pr policy log-prob sums (with grad), nc/nr token counts, rc/rr reference sums.

    Returns (loss, metrics)."""
    beta, kind, ftx = s["pref_beta"], s["pref_loss"], s["pref_ftx"]
    nll_chosen = -pc / nc  # the SFT term: the chosen answer's per-token NLL
    if kind in ("ipo", "orpo", "simpo"):  # these compare per-token averages (LLaMA-Factory, TRL)
        pc, pr = pc / nc, pr / nr
        if rc is not None:
            rc, rr = rc / nc, rr / nr
    extra = {}
    if kind in ("sigmoid", "hinge", "ipo"):
        z = (pc - pr) - (rc - rr)  # policy log-ratio minus reference log-ratio
        if kind == "sigmoid":  # DPO, with cDPO's label smoothing eps
            eps = s["dpo_label_smoothing"]
            losses = (1 - eps) * F.softplus(-beta * z) + eps * F.softplus(beta * z)
        elif kind == "hinge":  # SLiC
            losses = torch.relu(1 - beta * z)
        else:  # IPO, eq. 17
            losses = (z - 1 / (2 * beta)) ** 2
        chosen_rewards, rejected_rewards = beta * (pc - rc).detach(), beta * (pr - rr).detach()
    elif kind == "orpo":
        a, b = pc.clamp(max=ODDS_CLAMP), pr.clamp(max=ODDS_CLAMP)
        log_odds = (pc - pr) - (log1mexp(a) - log1mexp(b))  # log(odds(w) / odds(l)), odds = p / (1 - p)
        odds_loss = F.softplus(-log_odds)  # -log sigmoid(log odds ratio)
        losses = -pc + beta * odds_loss
        chosen_rewards, rejected_rewards = beta * pc.detach(), beta * pr.detach()
        extra = {"sft_loss": (-pc).mean().item(), "odds_ratio_loss": odds_loss.mean().item()}
    elif kind == "simpo":
        losses = F.softplus(-(beta * (pc - pr) - s["simpo_gamma"]))
        chosen_rewards, rejected_rewards = beta * pc.detach(), beta * pr.detach()
    else:
        raise ValueError(f"unknown pref_loss {kind}")
    losses = losses + ftx * nll_chosen
    metrics = pair_metrics(chosen_rewards, rejected_rewards, pc.detach(), pr.detach())
    metrics.update(extra)
    return losses.mean(), metrics


def kto_objective(s, pt, nt, rt, tags, pkl, rkl):
    """stage kto: pt policy target sums (with grad), nt counts, rt reference sums, tags (bool, desirable),
    pkl/rkl policy/reference log-prob sums of the KL (mismatched) sequences. Returns (loss, metrics)."""
    beta = s["pref_beta"]
    kl = (pkl - rkl).mean().detach().clamp(min=0)  # z0, detached
    r = pt - rt
    losses = torch.where(tags,
                         s["kto_chosen_weight"] * (1 - torch.sigmoid(beta * (r - kl))),
                         s["kto_rejected_weight"] * (1 - torch.sigmoid(beta * (kl - r))))
    loss = losses.mean()
    n, n_d = len(pt), int(tags.sum())
    if n_d > 0 and s["pref_ftx"] > 0:  # LLaMA-Factory: ftx * mean_D(nll per token) / N_D * N
        loss = loss + s["pref_ftx"] * (-pt[tags] / nt[tags]).mean() / n_d * n
    rewards = beta * r.detach()
    metrics = {}
    if n_d > 0:
        metrics["rewards/chosen"] = rewards[tags].mean().item()
    if n_d < n:
        metrics["rewards/rejected"] = rewards[~tags].mean().item()
    if 0 < n_d < n:
        metrics["rewards/margins"] = metrics["rewards/chosen"] - metrics["rewards/rejected"]
    if n_d > 0:
        metrics["logps/chosen"] = pt.detach()[tags].mean().item()
    if n_d < n:
        metrics["logps/rejected"] = pt.detach()[~tags].mean().item()
    metrics["kl"] = kl.item()
    return loss, metrics


def rm_objective(chosen_scores, rejected_scores):
    """stage rm: Bradley-Terry, -log sigmoid(s_w - s_l), mean; accuracy counts s_w > s_l strictly."""
    loss = F.softplus(rejected_scores - chosen_scores).mean()
    return loss, {"accuracy": (chosen_scores > rejected_scores).double().mean().item()}


# ---- the model side ---------------------------------------------------------------------------------------------

def answer_logp(logits_of, prompt, answer):
    """(sum of log p(answer tokens | everything before), token count); logits_of(ids [1, T]) -> [T, vocab]."""
    ids = torch.tensor([list(prompt) + list(answer)])
    logp = torch.log_softmax(logits_of(ids)[:-1].float(), dim=-1)  # position t-1 predicts token t
    tokens = logp.gather(-1, ids[0, 1:, None])[:, 0]
    return tokens[len(prompt) - 1:].sum(), float(len(answer))


def last_hidden(model, ids):
    return model(input_ids=ids, output_hidden_states=True, use_cache=False).hidden_states[-1][0, -1].float()


def run(args):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32, attn_implementation="eager")
    if args.adapter:
        model = PeftModel.from_pretrained(model, args.adapter, is_trainable=True)
    model.eval()  # no dropout (LLaMA-Factory disables it); gradients still flow
    logits_of = lambda ids: model(input_ids=ids, use_cache=False).logits[0]
    s = {"pref_beta": args.pref_beta, "pref_loss": args.pref_loss, "pref_ftx": args.pref_ftx,
         "dpo_label_smoothing": args.dpo_label_smoothing, "simpo_gamma": args.simpo_gamma,
         "kto_chosen_weight": args.kto_chosen_weight, "kto_rejected_weight": args.kto_rejected_weight}
    batch = json.load(open(args.batch))

    def reference(fn):
        with torch.no_grad():
            if args.adapter:
                with model.disable_adapter():
                    return fn()
            return fn()

    extra_params = {}
    if args.stage == "dpo":
        pairs = batch["pairs"]
        chosen = [answer_logp(logits_of, p["prompt"], p["chosen"]) for p in pairs]
        rejected = [answer_logp(logits_of, p["prompt"], p["rejected"]) for p in pairs]
        pc, nc = torch.stack([c[0] for c in chosen]), torch.tensor([c[1] for c in chosen])
        pr, nr = torch.stack([r[0] for r in rejected]), torch.tensor([r[1] for r in rejected])
        rc = rr = None
        if args.pref_loss in ("sigmoid", "hinge", "ipo"):
            rc = reference(lambda: torch.stack([answer_logp(logits_of, p["prompt"], p["chosen"])[0] for p in pairs]))
            rr = reference(lambda: torch.stack([answer_logp(logits_of, p["prompt"], p["rejected"])[0] for p in pairs]))
        loss, metrics = dpo_objective(s, pc, pr, nc, nr, rc, rr)
        examples = [{"policy_chosen_logps": pc[i].item(), "policy_rejected_logps": pr[i].item(),
                     "chosen_tokens": nc[i].item(), "rejected_tokens": nr[i].item(),
                     **({"reference_chosen_logps": rc[i].item(), "reference_rejected_logps": rr[i].item()} if rc is not None else {})}
                    for i in range(len(pairs))]
    elif args.stage == "kto":
        ex = batch["examples"]
        n = len(ex)
        kl_answers = [e.get("kl_completion", ex[n - 1 - i]["completion"]) for i, e in enumerate(ex)]
        targets = [answer_logp(logits_of, e["prompt"], e["completion"]) for e in ex]
        pt, nt = torch.stack([t[0] for t in targets]), torch.tensor([t[1] for t in targets])
        tags = torch.tensor([bool(e["kto_tag"]) for e in ex])
        with torch.no_grad():
            pkl = torch.stack([answer_logp(logits_of, e["prompt"], k)[0] for e, k in zip(ex, kl_answers)])
        rt = reference(lambda: torch.stack([answer_logp(logits_of, e["prompt"], e["completion"])[0] for e in ex]))
        rkl = reference(lambda: torch.stack([answer_logp(logits_of, e["prompt"], k)[0] for e, k in zip(ex, kl_answers)]))
        loss, metrics = kto_objective(s, pt, nt, rt, tags, pkl, rkl)
        examples = [{"policy_target_logps": pt[i].item(), "target_tokens": nt[i].item(), "kto_tag": bool(tags[i]),
                     "reference_target_logps": rt[i].item(), "policy_kl_logps": pkl[i].item(),
                     "reference_kl_logps": rkl[i].item()} for i in range(n)]
    elif args.stage == "rm":
        if not args.value_head:
            sys.exit("rm needs --value-head <value_head.safetensors>")
        from safetensors.torch import load_file
        vh = load_file(args.value_head)
        w = vh["v_head.summary.weight"].float().clone().requires_grad_(True)
        b = vh["v_head.summary.bias"].float().clone().requires_grad_(True)
        extra_params = {"v_head.summary.weight": w, "v_head.summary.bias": b}
        score = lambda prompt, answer: (w @ last_hidden(model, torch.tensor([list(prompt) + list(answer)])) + b)[0]
        pairs = batch["pairs"]
        sc = torch.stack([score(p["prompt"], p["chosen"]) for p in pairs])
        sr = torch.stack([score(p["prompt"], p["rejected"]) for p in pairs])
        loss, metrics = rm_objective(sc, sr)
        examples = [{"chosen_score": sc[i].item(), "rejected_score": sr[i].item()} for i in range(len(pairs))]
    else:
        sys.exit(f"unknown stage {args.stage}")

    loss.backward()
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad] + list(extra_params.items())
    grads, total = {}, 0.0
    for name, p in params:
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        g = g.detach().float().flatten()
        total += float((g.double() ** 2).sum())
        entry = {"numel": g.numel(), "norm": g.norm().item()}
        if args.full_grads:
            entry["values"] = g.tolist()
        else:
            entry["first"] = g[:8].tolist()
        grads[name] = entry
    out = {"stage": args.stage, "settings": s, "loss": loss.item(), "metrics": metrics, "examples": examples,
           "gradients": grads, "grad_norm": math.sqrt(total)}
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)
    print(f"{args.stage}/{args.pref_loss if args.stage == 'dpo' else ''} loss {loss.item():.8f} "
          f"grad_norm {out['grad_norm']:.6e} metrics {json.dumps(metrics)}")


# ---- self-test: the formulas on tiny tensors, against numbers worked out by hand --------------------------------

def self_test():
    d = lambda *v: torch.tensor(v, dtype=torch.float64)
    base = {"pref_beta": 0.1, "pref_loss": "sigmoid", "pref_ftx": 0.0, "dpo_label_smoothing": 0.0,
            "simpo_gamma": 0.5, "kto_chosen_weight": 1.0, "kto_rejected_weight": 1.0}
    S = lambda **k: {**base, **k}
    pc, pr, nc, nr, rc, rr = d(-10, -20), d(-12, -18), d(5, 10), d(6, 9), d(-11, -19), d(-11, -19)
    failures = []

    def check(name, got, want, tol=1e-9):
        ok = abs(got - want) <= tol * max(1.0, abs(want))
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {got:.12g} (want {want:.12g})")
        if not ok:
            failures.append(name)

    # DPO: z = +2, -2; (softplus(-0.2) + softplus(0.2)) / 2
    check("dpo sigmoid", dpo_objective(S(), pc, pr, nc, nr, rc, rr)[0].item(), 0.6981388693815918)
    check("dpo label smoothing 0.2, beta 0.5",
          dpo_objective(S(pref_beta=0.5, dpo_label_smoothing=0.2), pc, pr, nc, nr, rc, rr)[0].item(), 0.8132616875182228)
    check("dpo ftx 0.5", dpo_objective(S(pref_ftx=0.5), pc, pr, nc, nr, rc, rr)[0].item(), 1.6981388693815918)
    check("hinge beta 1", dpo_objective(S(pref_beta=1.0, pref_loss="hinge"), pc, pr, nc, nr, rc, rr)[0].item(), 1.5)
    check("ipo", dpo_objective(S(pref_loss="ipo"), pc, pr, nc, nr, rc, rr)[0].item(), 24.311728395061728)
    check("orpo equal odds", dpo_objective(S(pref_loss="orpo"), pc, pr, nc, nr)[0].item(), 2 + 0.1 * math.log(2))
    check("orpo a=-0.75 b=-3 beta 0.25",
          dpo_objective(S(pref_loss="orpo", pref_beta=0.25), d(-3), d(-9), d(4), d(3))[0].item(), 0.7642193421357966)
    check("orpo certain answer stays finite",
          float(math.isfinite(dpo_objective(S(pref_loss="orpo"), d(0), d(-2), d(3), d(2))[0].item())), 1.0)
    check("simpo beta 2", dpo_objective(S(pref_loss="simpo", pref_beta=2.0), pc, pr, nc, nr)[0].item(), 0.9740769841801067)
    check("simpo uneven", dpo_objective(S(pref_loss="simpo", pref_beta=2.0), d(-3), d(-9), d(4), d(3))[0].item(),
          0.018149927917809738)
    metrics = dpo_objective(S(pref_beta=0.5), d(-10, -20, -4), d(-12, -18, -5), d(5, 10, 2), d(6, 9, 3),
                            d(-11, -19, -6), d(-11, -19, -5))[1]
    check("dpo rewards/accuracies", metrics["rewards/accuracies"], 2 / 3)
    check("dpo rewards/margins", metrics["rewards/margins"], 1 / 3)

    kto_args = (d(-9, -14, -20.5), d(3, 4, 5), d(-10, -12, -20), torch.tensor([True, False, True]),
                d(-5.7, -7.1, -8.3), d(-6, -8, -8))
    loss, metrics = kto_objective(S(pref_beta=0.5, kto_chosen_weight=1.5, kto_rejected_weight=0.8), *kto_args)
    check("kto mixed tags", loss.item(), 0.5701654627444647)
    check("kto kl", metrics["kl"], 0.3)
    loss, metrics = kto_objective(S(), d(-9, -14), d(3, 4), d(-10, -12), torch.tensor([True, False]), d(-7, -9), d(-6, -6))
    check("kto kl clamped at 0", loss.item(), 0.462593407604291)
    ftx_args = kto_args[:4] + (d(-6, -8, -8), d(-6, -8, -8))
    check("kto ftx rescale", kto_objective(S(pref_ftx=0.2), *ftx_args)[0].item() - kto_objective(S(), *ftx_args)[0].item(), 1.065)
    loss, metrics = rm_objective(d(2, -1, 0.5), d(1, 1, 0.5))
    check("rm loss", loss.item(), 1.0444456263737136)
    check("rm accuracy (a tie is not accurate)", metrics["accuracy"], 1 / 3)

    # answer_logp reads position t-1 for token t: a toy model whose logits at position t favour token t+1.
    vocab = 5
    toy = lambda ids: torch.stack([F.one_hot((ids[0, t] + 1) % vocab, vocab).double() * 3 for t in range(ids.shape[1])])
    hit, miss = math.log(math.exp(3) / (math.exp(3) + 4)), math.log(1 / (math.exp(3) + 4))
    check("answer_logp sums the answer tokens only", answer_logp(toy, [0, 1], [2, 4])[0].item(), hit + miss, 1e-6)
    check("answer_logp counts the answer tokens", answer_logp(toy, [0, 1], [2, 4])[1], 2.0)

    # The gradients autograd gives these formulas: ORPO near 0 against central differences (its touchy part).
    x = d(-0.01, -0.3)
    x.requires_grad_(True)
    f = lambda v: dpo_objective(S(pref_loss="orpo", pref_beta=0.3), v, d(-0.004, -0.9), d(5, 3), d(2, 3))[0]
    f(x).backward()
    h = 1e-7
    for i in range(2):
        e = torch.zeros(2, dtype=torch.float64)
        e[i] = h
        check(f"orpo gradient {i} vs central difference", x.grad[i].item(),
              ((f(x.detach() + e) - f(x.detach() - e)) / (2 * h)).item(), 1e-6)

    print(f"{len(failures)} failed" if failures else "all passed")
    return 1 if failures else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--self-test", action="store_true")
    ap.add_argument("--model")
    ap.add_argument("--adapter")
    ap.add_argument("--value-head")
    ap.add_argument("--batch")
    ap.add_argument("--out")
    ap.add_argument("--stage", choices=["dpo", "kto", "rm"], default="dpo")
    ap.add_argument("--pref-loss", choices=["sigmoid", "hinge", "ipo", "orpo", "simpo"], default="sigmoid")
    ap.add_argument("--pref-beta", type=float, default=0.1)
    ap.add_argument("--pref-ftx", type=float, default=0.0)
    ap.add_argument("--dpo-label-smoothing", type=float, default=0.0)
    ap.add_argument("--simpo-gamma", type=float, default=0.5)
    ap.add_argument("--kto-chosen-weight", type=float, default=1.0)
    ap.add_argument("--kto-rejected-weight", type=float, default=1.0)
    ap.add_argument("--full-grads", action="store_true")
    args = ap.parse_args()
    if args.self_test:
        sys.exit(self_test())
    if not (args.model and args.batch and args.out):
        ap.error("--model, --batch and --out are needed (or --self-test)")
    run(args)


if __name__ == "__main__":
    main()
