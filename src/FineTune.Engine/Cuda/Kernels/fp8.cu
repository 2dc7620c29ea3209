// FP8 frozen weights (fp8: true): per-tensor "current scaling" of activations and gradients before cuBLASLt's FP8
// products, and the weight's dequantization. Math of every step (Fp8.cs is the CPU reference, bit for bit):
//   amax = max_i |x_i|            (fmaxf: NaN ignored)
//   s    = max_fmt / amax         (1 when amax is 0 or not finite; max_fmt = 448 for E4M3, 57344 for E5M2)
//   q_i  = cast_fmt(x_i · s)      (round to nearest even, finite values past max_fmt saturate)
//   scale_inv = 1 / s             (cuBLASLt's A/B scale: the product reads x ≈ q · scale_inv)
// Two launches per tensor (amax by atomicMax on the float's bits, which order as unsigned for |x| ≥ 0, then the cast
// reading amax from device memory): no host round trip inside a training step.
// Delayed scaling (Fp8DelayedScale.cs: a site's F32 slice [history amax, pass amax, pushes, ring…]) is one launch: the
// cast takes amax = site[0] (the largest amax of the site's last passes, fixed through a pass) and max-es the tensor's
// own amax into site[1] as it goes; fp8_history_advance ends the pass for every site at once. A site not yet advanced
// casts with current scaling and records its amax through the `record` argument of the two-launch form.
#include "fp8.cuh"

// FP8 code → its exact f32 value, built from the bits (E4M3 has no infinities; S.1111.111 is NaN).
__device__ __forceinline__ float fp8_decode(unsigned char c, int fmt)
{
    int m = fmt == FP8_E4M3 ? 3 : 2, emin = fmt == FP8_E4M3 ? -6 : -14;
    int e = (c & 0x7f) >> m, mant = c & ((1 << m) - 1);
    unsigned sign = (unsigned)(c & 0x80) << 24;
    if ((fmt == FP8_E4M3 && e == 15 && mant == 7) || (fmt == FP8_E5M2 && e == 31 && mant != 0)) return __uint_as_float(sign | 0x7fc00000u);
    if (fmt == FP8_E5M2 && e == 31) return __uint_as_float(sign | 0x7f800000u);
    if (e == 0) return __uint_as_float(sign | __float_as_uint(__fmul_rn((float)mant, __uint_as_float((unsigned)(127 + emin - m) << 23))));
    return __uint_as_float(sign | ((unsigned)(e - 1 + emin + 127) << 23) | ((unsigned)mant << (23 - m)));
}

// amax[0] = max(amax[0], max_i |x_i|) as float bits; the caller zeroes amax first.
extern "C" __global__ void fp8_amax(const void* x, int dt, i64 n, unsigned* amax)
{
    float m = 0.0f;
    GRID_STRIDE(i, n) m = fmaxf(m, fabsf(ld(x, i, dt)));
    m = block_max(m);
    if (threadIdx.x == 0) atomicMax(amax, __float_as_uint(m));
}

// q_i = cast(x_i · s), s from amax as above. With record (a delayed-scaling site's pass amax, not yet advanced), block
// 0's thread 0 also max-es amax into it.
extern "C" __global__ void fp8_quantize(unsigned char* q, float* scale_inv, const void* x, int dt, i64 n, const unsigned* amax, int fmt, unsigned* record)
{
    float s = fp8_scale(__uint_as_float(*amax), fmt, scale_inv);
    if (record != nullptr && blockIdx.x == 0 && threadIdx.x == 0) atomicMax(record, *amax);
    GRID_STRIDE(i, n) q[i] = fp8_encode(__fmul_rn(ld(x, i, dt), s), fmt);
}

// Delayed scaling: q_i = cast(x_i · s) with s from the site's history amax, and site[1] = max(site[1], max_i |x_i|).
extern "C" __global__ void fp8_quantize_delayed(unsigned char* q, float* scale_inv, const void* x, int dt, i64 n, float* site, int fmt)
{
    float s = fp8_scale(site[0], fmt, scale_inv);
    float m = 0.0f;
    GRID_STRIDE(i, n)
    {
        float v = ld(x, i, dt);
        m = fmaxf(m, fabsf(v));
        q[i] = fp8_encode(__fmul_rn(v, s), fmt);
    }
    fp8_record_amax(site, m);
}

// The end of a pass for sites 0 … sites−1 (one block each; Fp8DelayedScale.Advance is the reference): a non-zero pass
// amax is pushed into the ring at pushes % history, site[0] becomes the ring's largest value, site[1] returns to 0.
extern "C" __global__ void fp8_history_advance(float* states, int sites, int history)
{
    if (blockIdx.x >= sites) return;
    float* site = states + (i64)blockIdx.x * (3 + history);
    float pending = site[1];
    if (threadIdx.x == 0 && pending > 0.0f)
    {
        int pushes = __float_as_int(site[2]);
        site[3 + pushes % history] = pending;
        site[2] = __int_as_float(pushes + 1);
    }
    __syncthreads();
    float m = 0.0f;
    for (int i = threadIdx.x; i < history; i += blockDim.x) m = fmaxf(m, site[3 + i]);
    m = block_max(m); // its barriers order every thread's reads of site[1] and the ring before the stores below
    if (threadIdx.x == 0)
    {
        site[0] = m;
        site[1] = 0.0f;
    }
}

// out_i = decode(q_i) · scale_inv[0], rounded once to out's dtype (a frozen FP8 weight read back: merge, checks).
extern "C" __global__ void fp8_dequantize(void* out, int dt, const unsigned char* q, const float* scale_inv, i64 n, int fmt)
{
    float inv = *scale_inv;
    GRID_STRIDE(i, n) st(out, i, __fmul_rn(fp8_decode(q[i], fmt), inv), dt);
}

// bf16 fast paths of fp8_amax and fp8_quantize, eight elements per thread and step (n8 = n / 8, x 16-byte aligned,
// q 8-byte aligned): the same per-element arithmetic, so the same amax and codes as the scalar kernels, at full width
// (the scalar cast's one-byte stores left these passes at about half the memory bandwidth, 57 of 446 ms of a 7B step).
extern "C" __global__ void fp8_amax_v8(const uint4* x, i64 n8, unsigned* amax)
{
    float m = 0.0f;
    GRID_STRIDE(i, n8)
    {
        float v[8];
        unpack8(x[i], v);
#pragma unroll
        for (int j = 0; j < 8; j++) m = fmaxf(m, fabsf(v[j]));
    }
    m = block_max(m);
    if (threadIdx.x == 0) atomicMax(amax, __float_as_uint(m));
}

extern "C" __global__ void fp8_quantize_v8(uint2* q, float* scale_inv, const uint4* x, i64 n8, const unsigned* amax, int fmt, unsigned* record)
{
    float s = fp8_scale(__uint_as_float(*amax), fmt, scale_inv);
    if (record != nullptr && blockIdx.x == 0 && threadIdx.x == 0) atomicMax(record, *amax);
    GRID_STRIDE(i, n8)
    {
        float v[8];
        unpack8(x[i], v);
        q[i] = fp8_encode8(v, s, fmt);
    }
}

// fp8_quantize_delayed, eight bf16 values per thread and step: one read of x where current scaling reads it twice.
extern "C" __global__ void fp8_quantize_delayed_v8(uint2* q, float* scale_inv, const uint4* x, i64 n8, float* site, int fmt)
{
    float s = fp8_scale(site[0], fmt, scale_inv);
    float m = 0.0f;
    GRID_STRIDE(i, n8)
    {
        float v[8];
        unpack8(x[i], v);
#pragma unroll
        for (int j = 0; j < 8; j++) m = fmaxf(m, fabsf(v[j]));
        q[i] = fp8_encode8(v, s, fmt);
    }
    fp8_record_amax(site, m);
}
