"""The table of tests/device/bench.sh: FineTune's `finetune bench` JSON lines joined with the peers' (hf_peft_bench.py:
HF+PEFT, and optionally the same with LIGER=1) on (shape, batch, seq, grad_ckpt), with issue 13's measures: the ratio
to the stronger peer (the one with more tokens/s), MFU, and whether the row meets 2× that peer at no more peak memory.

    python3 tests/device/bench_table.py finetune.jsonl peer.jsonl [peer_liger.jsonl]
"""
import json
import sys


def key(r):
    return (r["shape"], int(r["batch"]), int(r["seq"]), str(r["grad_ckpt"]).lower() in ("true", "1"))


def load(path):
    rows = {}
    for line in open(path):
        line = line.strip()
        if line.startswith("{"):
            r = json.loads(line)
            rows[key(r)] = r
    return rows


def cell(r):
    return f"{r['tokens_per_s']:,.0f} ({r['peak_gib']:.2f})" if "tokens_per_s" in r else ("OOM" if r.get("oom") else "no result")


def table(ours, peers, names):
    head = ["shape", "b×T", "ckpt", "FineTune tok/s (peak GiB)", *[f"{n} tok/s (peak GiB)" for n in names], "vs stronger peer", "MFU", "2× at ≤ its memory"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    keys = list(ours) + [k for p in peers for k in p if k not in ours]
    for k in dict.fromkeys(keys):
        r = ours.get(k, {})
        ps = [p.get(k, {}) for p in peers]
        shape, b, s, ckpt = k
        ran = [p for p in ps if "tokens_per_s" in p]
        if "tokens_per_s" in r and ran:
            best = max(ran, key=lambda p: p["tokens_per_s"])
            ratio = r["tokens_per_s"] / best["tokens_per_s"]
            goal = "met" if ratio >= 2 and r["peak_gib"] <= best["peak_gib"] else "missed"
            tail = [f"**{ratio:.2f}×**", f"{100 * r['mfu']:.1f}%", goal]
        else:
            # a row one side could not run (out of memory, or a failed run: see its log)
            tail = ["–", f"{100 * r['mfu']:.1f}%" if "mfu" in r else "", ""]
        lines.append("| " + " | ".join([shape, f"{b}×{s}", "on" if ckpt else "off", cell(r), *[cell(p) for p in ps], *tail]) + " |")
    return "\n".join(lines)


def main():
    ours = load(sys.argv[1])
    peers = [load(p) for p in sys.argv[2:]]
    names = ["HF+PEFT", "HF+PEFT+Liger"][:len(peers)]
    print(table(ours, peers, names))


if __name__ == "__main__":
    main()
