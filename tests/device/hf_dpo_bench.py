# Peer baseline for `finetune bench --objective dpo`: one DPO step as TRL's DPOTrainer runs it over HF transformers + PEFT
# (the engine LLaMA-Factory's `stage: dpo` drives). Random-init model of a real shape (hf_peft_bench.py's SHAPES and
# settings: LoRA r=8, alpha=16 on q,k,v,o,gate,up,down; bf16 model, fp32 adapters, autocast bf16; AdamW; clipping 1.0).
# A step: chosen and rejected concatenated into one batch of 2·PAIRS rows of SEQ tokens (first half prompt, labels -100),
# the reference log-probs from the same model with the adapter disabled under no_grad (TRL's null_ref_context), the
# policy forward, per-sequence log-prob sums (log_softmax gathered at the labels), the sigmoid loss with beta 0.1,
# backward, clip, AdamW.
#   python3 hf_dpo_bench.py SHAPE:PAIRS:SEQ:CKPT ...      e.g. qwen2.5-7b:2:2048:1
import json, os, sys, time, torch
import torch.nn.functional as F
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_peft_bench import SHAPES, LIGER


def logps(model, ids, labels):
    logits = model(input_ids=ids).logits[:, :-1].float()
    target = labels[:, 1:]
    mask = target != -100
    per_token = torch.gather(logits.log_softmax(-1), 2, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (per_token * mask).sum(-1)


def run(name, pairs, seq, ckpt, steps=10, warm=3, beta=0.1):
    from peft import LoraConfig, get_peft_model
    make, targets, liger_fn = SHAPES[name]
    if LIGER:
        import liger_kernel.transformers as L
        getattr(L, liger_fn)()
    torch.manual_seed(0)
    cfg = make()
    cfg._attn_implementation = "sdpa"
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    if ckpt:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, task_type="CAUSAL_LM", target_modules=targets))
    for p in model.parameters():
        if p.requires_grad: p.data = p.data.float()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.01)
    ids = torch.randint(0, cfg.vocab_size, (2 * pairs, seq), device="cuda")
    labels = ids.clone()
    labels[:, : seq // 2] = -100
    torch.cuda.reset_peak_memory_stats()
    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            with torch.no_grad(), model.disable_adapter():
                ref = logps(model, ids, labels)
            pol = logps(model, ids, labels)
        z = beta * ((pol[:pairs] - pol[pairs:]) - (ref[:pairs] - ref[pairs:]))
        loss = -F.logsigmoid(z).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
        return loss.detach()
    for _ in range(warm): step()
    torch.cuda.synchronize(); t = time.time()
    for _ in range(steps): loss = step()
    torch.cuda.synchronize(); dt = (time.time() - t) / steps
    r = dict(peer="hf+peft+liger" if LIGER else "hf+peft", objective="dpo", shape=name, batch=pairs, seq=seq, grad_ckpt=ckpt,
             step_s=round(dt, 4), tokens_per_s=round(2 * pairs * seq / dt), peak_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2),
             loss=round(float(loss), 4), torch=torch.__version__)
    print(json.dumps(r), flush=True)
    del model, opt; torch.cuda.empty_cache()


from transformers import AutoModelForCausalLM

if __name__ == "__main__":
    for spec in sys.argv[1:]:
        name, b, s, c = spec.split(":")
        try: run(name, int(b), int(s), c == "1")
        except torch.cuda.OutOfMemoryError:
            print(json.dumps(dict(objective="dpo", shape=name, batch=int(b), seq=int(s), grad_ckpt=c == "1", oom=True)), flush=True); torch.cuda.empty_cache()
