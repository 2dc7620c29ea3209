"""The ratio table of tests/device/bench.sh: FineTune's `finetune bench` JSON lines joined with the peer's
(hf_peft_bench.py) on (shape, batch, seq, grad_ckpt).

    python3 tests/device/bench_table.py finetune.jsonl peer.jsonl
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


def main():
    ours, peer = load(sys.argv[1]), load(sys.argv[2])
    print("| shape | batch×seq | grad ckpt | FineTune tok/s | HF+PEFT tok/s | ratio | FineTune peak GiB | HF peak GiB | MFU | floor |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for k in list(ours) + [k for k in peer if k not in ours]:
        r, p = ours.get(k, {}), peer.get(k, {})
        shape, b, s, ckpt = k
        if "tokens_per_s" not in r or "tokens_per_s" not in p:
            # a row one side could not run (out of memory, or a failed run: see its log)
            print(f"| {shape} | {b}×{s} | {'on' if ckpt else 'off'} | {r.get('tokens_per_s', 'no result')} | {p.get('tokens_per_s', 'no result')} | – | | | | |")
            continue
        ratio = r["tokens_per_s"] / p["tokens_per_s"]
        floor = ratio >= 1 and r["peak_gib"] <= p["peak_gib"]
        print(f"| {shape} | {b}×{s} | {'on' if ckpt else 'off'} | {r['tokens_per_s']:,.0f} | {p['tokens_per_s']:,.0f} | **{ratio:.2f}×** | "
              f"{r['peak_gib']:.2f} | {p['peak_gib']:.2f} | {100 * r['mfu']:.1f}% | {'met' if floor else 'MISSED'} |")


if __name__ == "__main__":
    main()
