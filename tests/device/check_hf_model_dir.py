"""Checks that a model directory FineTune wrote (scratch download, merge output, HF export) loads in
Hugging Face transformers as it is, and prints a logits fingerprint.

Run on the GPU machine (Python with torch + transformers):
    python tests/device/check_hf_model_dir.py <model_dir> [<other_dir_to_compare>]
Exits 1 when loading fails or, with two directories, when logits differ by more than 1e-4.
"""
import sys

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def logits(path):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32)
    model.eval()
    text = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], tokenize=False, add_generation_prompt=True)
    ids = tok(text, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model(ids).logits
    print(f"{path}: {type(model).__name__}, {sum(p.numel() for p in model.parameters())} parameters, "
          f"{ids.shape[1]} prompt tokens, logits[0,-1,:4]={out[0, -1, :4].tolist()}")
    return out


def main():
    first = logits(sys.argv[1])
    if len(sys.argv) > 2:
        second = logits(sys.argv[2])
        diff = (first - second).abs().max().item()
        print(f"max |Δlogits| = {diff:.3e}")
        sys.exit(0 if diff <= 1e-4 else 1)


if __name__ == "__main__":
    main()
