#!/usr/bin/env python3
"""FineTune's bitsandbytes formats against a reference written from bitsandbytes' published algorithm.

    FineTune.DeviceChecks quant <dir>          # (or any machine with .NET) writes quant_inputs/quant_finetune.safetensors
    python3 tests/device/bnb_reference.py <dir> [--json out.json]

The reference (torch, f32, CPU) follows bnb's functional.py and csrc/kernels.cu: 4-bit blocks of 64, absmax = max |x|,
x·(1/absmax) mapped to a code by the kernels' decision trees (a value on a midpoint takes the smaller code; an all-zero
block gives 0·inf = NaN and code 0), the first value of a pair in the high nibble; double quantization as
quantize_blockwise(absmax - mean, blocksize=256) with create_dynamic_map(signed=True) and dQuantize's binary search;
LLM.int8 as Int8Params: fp16 weight, SCB = row absmax, CB = round(w * 127/SCB). When `import bitsandbytes` works (and a
GPU is there) the same inputs also go through bnb itself. Every comparison is bit for bit; the script exits 1 on any
mismatch and prints where.
"""
import argparse, json, sys
import torch
from safetensors.torch import load_file

NF4 = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635, -0.18477343022823334,
       -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
       0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0]
# dQuantizeNF4's thresholds (midpoints of neighbouring codes), ascending; code = how many of them x exceeds.
NF4_MID = [-0.8480964004993439, -0.6106329262256622, -0.4599952697753906, -0.33967943489551544, -0.23460740596055984,
           -0.13791173323988914, -0.045525018125772476, 0.03979014977812767, 0.1202552504837513, 0.2035212516784668,
           0.2920137718319893, 0.3893125355243683, 0.5016634166240692, 0.6427869200706482, 0.8614784181118011]
FP4_LUT = [0.0, 0.005208333333, 0.66666667, 1.0, 0.33333333, 0.5, 0.16666667, 0.25]
# dQuantizeFP4's thresholds on |x| and the codes of the magnitudes they separate (0, 0.0625, 2, 3, 4, 6, 8, 12)/12.
FP4_MID = [0.00260417, 0.0859375, 0.20833333, 0.29166667, 0.4166667, 0.583333, 0.8333333]
FP4_BY_MAGNITUDE = [0b000, 0b001, 0b110, 0b111, 0b100, 0b101, 0b010, 0b011]


def f32(values):
    return torch.tensor(values, dtype=torch.float32)


def linspace_scalar(start, end, steps):
    # torch.linspace's scalar formula in f32 (start + step*i below halfway, end - step*(steps-1-i) from it).
    start, end = torch.tensor(start, dtype=torch.float32), torch.tensor(end, dtype=torch.float32)
    step = (end - start) / (steps - 1)
    half = steps // 2
    return torch.stack([start + step * i if i < half else end - step * (steps - i - 1) for i in range(steps)])


def dynamic_map(signed, linspace):
    data = []
    for i in range(7):
        items = 2 ** i + 1 if signed else 2 ** (i + 1) + 1
        b = linspace(0.1, 1.0, items)
        means = (b[:-1] + b[1:]) / 2.0
        scale = 10 ** (-6 + i)
        data += (scale * means).tolist()
        if signed:
            data += (-scale * means).tolist()
    data += [0.0, 1.0]
    return torch.tensor(sorted(data), dtype=torch.float32)


def block_absmax(x, bs):
    blocks = x.reshape(-1, bs)
    return blocks.abs().max(dim=1).values


def quantize_4bit(x, kind, bs=64):
    blocks = x.reshape(-1, bs)
    absmax = blocks.abs().max(dim=1).values
    scaled = blocks * (1.0 / absmax).unsqueeze(1)          # 0 * inf = NaN for an all-zero block, as the kernel
    if kind == "nf4":
        codes = (scaled.unsqueeze(-1) > f32(NF4_MID)).sum(-1)
    else:
        mag = (scaled.abs().unsqueeze(-1) > f32(FP4_MID)).sum(-1)
        codes = torch.tensor(FP4_BY_MAGNITUDE)[mag] + torch.where(scaled < 0, 8, 0)
    codes = codes.reshape(-1).to(torch.uint8)
    return (codes[0::2] << 4) | codes[1::2], absmax


def dequantize_4bit(packed, absmax, kind, bs=64):
    codes = torch.stack([packed >> 4, packed & 0x0F], dim=1).reshape(-1).long()
    lut = f32(NF4) if kind == "nf4" else torch.cat([f32(FP4_LUT), -f32(FP4_LUT)])
    return (lut[codes].reshape(-1, bs) * absmax.unsqueeze(1)).reshape(-1)


def dquantize(code, x):
    # bnb's dQuantize<0>: binary search from code[127], then the nearer neighbour by midpoint (ties to the lower code).
    pivot = torch.full_like(x, 127, dtype=torch.long)
    upper_p = torch.full_like(pivot, 255); lower_p = torch.zeros_like(pivot)
    lower = torch.full_like(x, -1.0); upper = torch.full_like(x, 1.0)
    val = code[pivot]
    i = 64
    while i > 0:
        right = x > val
        lower_p = torch.where(right, pivot, lower_p); lower = torch.where(right, val, lower)
        upper_p = torch.where(right, upper_p, pivot); upper = torch.where(right, upper, val)
        pivot = torch.where(right, pivot + i, pivot - i)
        val = code[pivot]
        i //= 2
    upper = torch.where(upper_p == 255, code[255], upper)
    lower = torch.where(lower_p == 0, code[0], lower)
    up = torch.where(x > (upper + val) * 0.5, upper_p, pivot)
    down = torch.where(x < (lower + val) * 0.5, lower_p, pivot)
    return torch.where(x > val, up, down).to(torch.uint8)


def quantize_blockwise(x, code, bs=256):
    n = x.numel()
    pad = (-n) % bs
    xp = torch.cat([x, torch.zeros(pad)]) if pad else x
    absmax = xp.reshape(-1, bs).abs().max(dim=1).values
    scaled = (xp.reshape(-1, bs) * (1.0 / absmax).unsqueeze(1)).reshape(-1)[:n]
    return dquantize(code, scaled), absmax


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--json")
    a = ap.parse_args()
    w = load_file(f"{a.dir}/quant_inputs.safetensors")["weight"].float()
    ft = load_file(f"{a.dir}/quant_finetune.safetensors")
    rows = []

    def same(name, ref, got):
        ref, got = ref.contiguous(), got.contiguous()
        if ref.dtype.is_floating_point:
            ok = ref.shape == got.shape and torch.equal(ref.view(torch.int32), got.view(torch.int32))
        else:
            ok = ref.shape == got.shape and torch.equal(ref, got)
        bad = 0 if ok else int((ref.reshape(-1) != got.reshape(-1)).sum()) if ref.shape == got.shape else -1
        rows.append({"check": name, "pass": ok, "mismatches": bad})
        print(f"{'ok  ' if ok else 'FAIL'} {name}{'' if ok else f' ({bad} differ)'}")

    flat = w.reshape(-1)
    for signed, key in ((True, "dynamic_map_signed"), (False, "dynamic_map_unsigned")):
        # torch.linspace itself: its CPU kernel rounds start + step*i once (FMA contraction), so the twice-rounded
        # formula (linspace_scalar) differs in 42 signed / 31 unsigned entries and is only printed.
        same(f"{key} (torch.linspace)", dynamic_map(signed, lambda s, e, n: torch.linspace(s, e, n, dtype=torch.float32)), ft[key])
        scalar = dynamic_map(signed, linspace_scalar)
        print(f"     {key}: the twice-rounded linspace formula differs from torch's in {int((scalar != ft[key]).sum())} entries")
    code = dynamic_map(True, lambda s, e, n: torch.linspace(s, e, n, dtype=torch.float32))
    for kind in ("nf4", "fp4"):
        packed, absmax = quantize_4bit(flat, kind)
        same(f"{kind} codes", packed, ft[f"{kind}.codes"])
        same(f"{kind} absmax", absmax, ft[f"{kind}.absmax"])
        same(f"{kind} dequantized", dequantize_4bit(packed, absmax, kind), ft[f"{kind}.dequantized"].reshape(-1))
        offset = absmax.mean()
        ft_offset = ft[f"{kind}_dq.offset"][0]
        print(f"     {kind} nested offset: torch mean {offset.item()!r}, FineTune {ft_offset.item()!r}")
        # Codes from FineTune's offset (the mean's last bit is a reduction-order matter), then from torch's.
        q, absmax2 = quantize_blockwise(absmax - ft_offset, code)
        same(f"{kind}+dq nested codes", q, ft[f"{kind}_dq.nested_codes"])
        same(f"{kind}+dq nested absmax", absmax2, ft[f"{kind}_dq.nested_absmax"])
        deq_absmax = code[q.long()] * absmax2.repeat_interleave(256)[: q.numel()] + ft_offset
        same(f"{kind}+dq dequantized", dequantize_4bit(packed, deq_absmax, kind), ft[f"{kind}_dq.dequantized"].reshape(-1))
    h = w.half().float()
    scb = h.abs().max(dim=1).values
    cb = torch.round(h * (127.0 / scb).unsqueeze(1)).to(torch.int8)
    same("int8 CB", cb, ft["int8.CB"])
    same("int8 SCB", scb, ft["int8.SCB"])
    same("int8 dequantized", cb.float() * (scb * (1.0 / 127.0)).unsqueeze(1), ft["int8.dequantized"])

    try:
        import bitsandbytes as bnb
        import bitsandbytes.functional as F
    except Exception as e:  # noqa: BLE001
        print(f"bitsandbytes not importable ({e}); compared with the reference above only")
    else:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        print(f"bitsandbytes {bnb.__version__} on {dev}")
        same("bnb create_dynamic_map(signed=True)", F.create_dynamic_map(signed=True), ft["dynamic_map_signed"])
        same("bnb create_dynamic_map(signed=False)", F.create_dynamic_map(signed=False), ft["dynamic_map_unsigned"])
        wb = w.to(torch.bfloat16).to(dev)
        for kind in ("nf4", "fp4"):
            p, s = F.quantize_4bit(wb, blocksize=64, quant_type=kind, compress_statistics=False)
            same(f"bnb {kind} codes", p.reshape(-1).cpu(), ft[f"{kind}.codes"])
            same(f"bnb {kind} absmax", s.absmax.float().cpu(), ft[f"{kind}.absmax"])
            p2, s2 = F.quantize_4bit(wb, blocksize=64, quant_type=kind, compress_statistics=True)
            print(f"     bnb {kind} nested offset {s2.offset.item()!r}")
            same(f"bnb {kind}+dq nested codes", s2.absmax.reshape(-1).cpu(), ft[f"{kind}_dq.nested_codes"])
            same(f"bnb {kind}+dq dequantized (bf16)", F.dequantize_4bit(p2, s2).float().reshape(-1).cpu(),
                 ft[f"{kind}_dq.dequantized"].reshape(-1).to(torch.bfloat16).float())
        if dev == "cuda":
            cbb, scbb, _ = F.int8_vectorwise_quant(w.half().to(dev))
            same("bnb int8 CB", cbb.cpu(), ft["int8.CB"])
            same("bnb int8 SCB", scbb.cpu(), ft["int8.SCB"])
    failed = [r for r in rows if not r["pass"]]
    print(f"bnb reference: {len(rows) - len(failed)} passed, {len(failed)} failed")
    if a.json:
        json.dump(rows, open(a.json, "w"), indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
