// The FP8 cast's device arithmetic (fp8.cu's header has the math; Fp8.cs is the CPU reference, bit for bit), shared by
// fp8.cu's casts and the kernels that cast their own output for the next product (swiglu.cu's and rmsnorm.cu's
// *_fp8_v8, fp8_scaling: delayed): one definition, so a fused cast writes the codes of the separate one by construction.
#pragma once
#include "common.cuh"

#define FP8_E4M3 0
#define FP8_E5M2 1

// Integer form of the cast, for architectures without the FP8 cvt (the kernels still compile for them; the products
// are refused before they run). Same arithmetic as Fp8.Encode.
__device__ __forceinline__ unsigned char fp8_encode_soft(float v, int fmt)
{
    unsigned bits = __float_as_uint(v);
    unsigned sign = (bits >> 24) & 0x80u;
    unsigned mag = bits & 0x7fffffffu;
    if (mag > 0x7f800000u) return (unsigned char)(sign | 0x7fu);
    int m = fmt == FP8_E4M3 ? 3 : 2, emin = fmt == FP8_E4M3 ? -6 : -14, maxcode = fmt == FP8_E4M3 ? 0x7e : 0x7b;
    int e = (int)(mag >> 23) - 127;
    int code;
    if (e < emin)
    {
        float scaled = __fmul_rn(__uint_as_float(mag), __uint_as_float((unsigned)(127 + m - emin) << 23));
        code = (int)rintf(scaled);
    }
    else
    {
        int drop = 23 - m;
        unsigned mant = mag & 0x7fffffu, kept = mant >> drop, rest = mant & ((1u << drop) - 1u), half = 1u << (drop - 1);
        code = ((e - emin + 1) << m) + (int)kept;
        if (rest > half || (rest == half && (kept & 1u))) code++;
    }
    return (unsigned char)(sign | (unsigned)min(code, maxcode));
}

// f32 → FP8 code: the hardware cvt on sm_89 and later (the value lands in the low byte of the pair).
__device__ __forceinline__ unsigned char fp8_encode(float v, int fmt)
{
#if __CUDA_ARCH__ >= 890
    unsigned short r;
    if (fmt == FP8_E4M3) asm("cvt.rn.satfinite.e4m3x2.f32 %0, %1, %2;" : "=h"(r) : "f"(0.0f), "f"(v));
    else asm("cvt.rn.satfinite.e5m2x2.f32 %0, %1, %2;" : "=h"(r) : "f"(0.0f), "f"(v));
    return (unsigned char)(r & 0xff);
#else
    return fp8_encode_soft(v, fmt);
#endif
}

// s = max_fmt / a (1 when a is 0 or not finite); block 0's thread 0 stores 1/s.
__device__ __forceinline__ float fp8_scale(float a, int fmt, float* scale_inv)
{
    float maxv = fmt == FP8_E4M3 ? 448.0f : 57344.0f;
    float s = (a > 0.0f && a <= 3.402823466e38f) ? __fdiv_rn(maxv, a) : 1.0f;
    if (blockIdx.x == 0 && threadIdx.x == 0) *scale_inv = __fdiv_rn(1.0f, s);
    return s;
}

// Eight bf16 values → eight codes (one uint2), each as fp8_quantize's element.
__device__ __forceinline__ uint2 fp8_encode8(const float (&v)[8], float s, int fmt)
{
    unsigned lo = 0u, hi = 0u;
#pragma unroll
    for (int j = 0; j < 4; j++)
    {
        lo |= (unsigned)fp8_encode(__fmul_rn(v[j], s), fmt) << (8 * j);
        hi |= (unsigned)fp8_encode(__fmul_rn(v[j + 4], s), fmt) << (8 * j);
    }
    return make_uint2(lo, hi);
}

// The bf16 values a stored uint4 holds, their max |v| folded into m: what a cast reading the output back would see.
__device__ __forceinline__ void stored8(uint4 packed, float (&v)[8], float& m)
{
    unpack8(packed, v);
#pragma unroll
    for (int j = 0; j < 8; j++) m = fmaxf(m, fabsf(v[j]));
}

// Delayed scaling: site[1] = max(site[1], the block's max |x|), m being this thread's; every thread of the block calls it.
__device__ __forceinline__ void fp8_record_amax(float* site, float m)
{
    m = block_max(m);
    if (threadIdx.x == 0) atomicMax((unsigned*)(site + 1), __float_as_uint(m));
}
