"""PyTorch's own attention kernels at FineTune's flash-bench shapes: the reference for "attention at Hopper speed".

Run on the GPU machine (torch with CUDA):  python3 tests/device/sdpa_bench.py [--json out.jsonl]

For each shape of `FineTune.DeviceChecks flashbench` with head_dim ≤ 128 (causal, grouped-query, bf16, one segment per
row) and each SDPA backend torch offers there (FLASH_ATTENTION: FlashAttention-2's kernels; CUDNN_ATTENTION: cuDNN's
fused attention; EFFICIENT_ATTENTION: xformers' kernels), the forward and the forward+backward are timed with CUDA
events (mean of 10 after 3 warm-ups). TFLOP/s count the causal half of 4·T²·D·Hq for the forward and 2.5 times that
for the backward, as flashbench does, so the numbers compare one to one.
"""
import json
import sys

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

SHAPES = [("llama3-8b", 1, 4096, 32, 8, 128), ("qwen2.5-7b", 1, 2048, 28, 4, 128), ("qwen2.5-7b 8k", 1, 8192, 28, 4, 128),
          ("qwen3-0.6b", 1, 2048, 16, 8, 128), ("qwen3-30b-a3b", 1, 2048, 32, 4, 128), ("qwen2.5-0.5b", 4, 2048, 14, 2, 64)]
BACKENDS = [("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION), ("efficient", SDPBackend.EFFICIENT_ATTENTION)]


def timed(fn, reps=10, warm=3):
    for _ in range(warm):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def main():
    out = open(sys.argv[sys.argv.index("--json") + 1], "w") if "--json" in sys.argv else None
    for name, b, t, hq, hkv, d in SHAPES:
        g = torch.Generator(device="cuda").manual_seed(7)
        q = torch.randn(b, hq, t, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
        k = torch.randn(b, hkv, t, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
        v = torch.randn(b, hkv, t, d, device="cuda", dtype=torch.bfloat16, generator=g).requires_grad_()
        dout = torch.randn(b, hq, t, d, device="cuda", dtype=torch.bfloat16, generator=g)
        flops = 4.0 * b * hq * (t * t / 2) * d
        for label, backend in BACKENDS:
            row = {"shape": name, "batch": b, "seq": t, "heads": f"{hq}/{hkv}", "head_dim": d, "backend": label}
            try:
                with sdpa_kernel(backend):
                    fwd = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                    ms_f = timed(fwd)

                    def fwd_bwd():
                        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                        o.backward(dout)
                    ms_fb = timed(fwd_bwd)
                ms_b = ms_fb - ms_f
                row.update(forward_ms=round(ms_f, 3), backward_ms=round(ms_b, 3),
                           forward_tflops=round(flops / (ms_f * 1e9), 1), backward_tflops=round(2.5 * flops / (ms_b * 1e9), 1))
            except Exception as e:  # a backend that does not take the shape says why
                row["error"] = f"{type(e).__name__}: {str(e)[:160]}"
            q.grad = k.grad = v.grad = None
            line = json.dumps(row)
            print(line, flush=True)
            if out:
                out.write(line + "\n")


if __name__ == "__main__":
    main()
