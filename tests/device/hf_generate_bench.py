#!/usr/bin/env python3
"""The peer of `finetune bench --generate`: Hugging Face transformers' generate() on the same model directory, the
same prompts (GenerationBenchmark.PromptToken's formula) and lengths, greedy, exactly NEW tokens per prompt (no EOS),
bf16, sdpa attention, left padding (all prompts have one length, so there is none). One JSON line per batch size.

  python3 hf_generate_bench.py <model dir> [--batches 1,8] [--prompts 64] [--prompt-len 64] [--new-tokens 32]

With --make-model DIR it first writes a random-weight Qwen3-1.7B-shaped model directory there (bf16 safetensors,
config.json) for both engines to load, and exits; --shape llama3-8b writes a Llama-3-8B-shaped one instead (16 GB: the
single-stream bandwidth row on a model whose products are large).
"""
import argparse, json, sys, time

import torch


def prompt_token(i, t, vocab):
    return (17 + 1009 * i + 9176 * t) % vocab


def make_model(path, shape="qwen3-1.7b"):
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen3Config, Qwen3ForCausalLM
    if shape == "llama3-8b":
        config = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                             num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192, rope_theta=500000.0,
                             rms_norm_eps=1e-5, tie_word_embeddings=False, torch_dtype="bfloat16", bos_token_id=128000,
                             eos_token_id=128001)
        torch.manual_seed(0)
        with torch.device("cuda"):
            model = LlamaForCausalLM(config).to(torch.bfloat16)
        model.save_pretrained(path, safe_serialization=True)
        print(json.dumps({"made": path, "shape": shape, "parameters": sum(p.numel() for p in model.parameters())}))
        return
    config = Qwen3Config(vocab_size=151936, hidden_size=2048, intermediate_size=6144, num_hidden_layers=28,
                         num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                         rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, torch_dtype="bfloat16",
                         bos_token_id=151643, eos_token_id=151645)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen3ForCausalLM(config).to(torch.bfloat16)
    model.save_pretrained(path, safe_serialization=True)
    print(json.dumps({"made": path, "parameters": sum(p.numel() for p in model.parameters())}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--make-model", action="store_true")
    ap.add_argument("--shape", default="qwen3-1.7b", choices=["qwen3-1.7b", "llama3-8b"])
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=32)
    a = ap.parse_args()
    if a.make_model:
        make_model(a.model, a.shape)
        return
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.bfloat16, attn_implementation="sdpa").cuda().eval()
    vocab = model.config.vocab_size
    model.generation_config.eos_token_id = None
    model.generation_config.pad_token_id = 0
    ids = torch.tensor([[prompt_token(i, t, vocab) for t in range(a.prompt_len)] for i in range(max(a.prompts, 256))], device="cuda")

    def run(batch, count):
        torch.cuda.synchronize()
        start = time.perf_counter()
        for s in range(0, count, batch):
            x = ids[s:min(count, s + batch)]
            model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False)
        torch.cuda.synchronize()
        return time.perf_counter() - start

    with torch.inference_mode():
        run(2, 2)  # warm-up
        for b in [int(x) for x in a.batches.split(",")]:
            count = max(a.prompts, b)
            seconds = run(b, count)
            # Single stream: decode speed from two lengths (prefill cancels out).
            decode = None
            if b == 1:
                x = ids[:1]
                torch.cuda.synchronize(); t0 = time.perf_counter()
                model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=1, min_new_tokens=1, do_sample=False)
                torch.cuda.synchronize(); t1 = time.perf_counter()
                model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=a.new_tokens, min_new_tokens=a.new_tokens, do_sample=False)
                torch.cuda.synchronize(); t2 = time.perf_counter()
                decode = round((a.new_tokens - 1) / ((t2 - t1) - (t1 - t0)), 1)
            print(json.dumps({"bench": "generate", "engine": "hf", "batch": b, "prompts": count, "prompt_len": a.prompt_len,
                              "new_tokens": a.new_tokens, "seconds": round(seconds, 4), "prompts_per_s": round(count / seconds, 2),
                              "tokens_per_s": round(count * a.new_tokens / seconds, 1), "decode_tokens_per_s_per_seq": decode}), flush=True)


if __name__ == "__main__":
    sys.exit(main())
