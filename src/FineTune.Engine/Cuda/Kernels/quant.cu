// Quantized frozen weights (bitsandbytes NF4 / FP4 / LLM.int8) dequantized into a compute-dtype scratch, and
// bitsandbytes' 8-bit block-wise AdamW. The CPU backend (Cpu/CpuBackend.Quantization.cs) is the reference: every
// f32 operation is written with __fmul_rn/__fadd_rn/__fdiv_rn so NVRTC cannot fuse or approximate it, and the
// results are bit-identical (tests/device/FineTune.DeviceChecks, ops "dequantize_*" and "adamw8bit").
#include "common.cuh"

// bnb csrc/kernels.cu nf4_dequantization_lut; fp4_dequantization_lut with the sign bit (bit 3) folded in.
__constant__ float NF4_LUT[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};
__constant__ float FP4_LUT[16] = {
    0.0f, 0.005208333333f, 0.66666667f, 1.0f, 0.33333333f, 0.5f, 0.16666667f, 0.25f,
    -0.0f, -0.005208333333f, -0.66666667f, -1.0f, -0.33333333f, -0.5f, -0.16666667f, -0.25f};

// absmax of block b: stored f32, or (double quantization) code2[q[b]]·absmax2[b / nested_bs] + offset, two roundings.
__device__ __forceinline__ float block_absmax(const float* absmax, const unsigned char* qabsmax, const float* code2,
                                              const float* absmax2, float offset, int nested_bs, i64 b)
{
    if (qabsmax == nullptr) return absmax[b];
    return __fadd_rn(__fmul_rn(code2[qabsmax[b]], absmax2[b / nested_bs]), offset);
}

// out[2i], out[2i+1] from byte i (high nibble first): w = lut[code]·absmax[block], rounded once to out's dtype.
// One thread per packed byte; blocksize is even, so both values of a byte share a block.
extern "C" __global__ void dequantize_4bit(void* out, int dt, const unsigned char* codes, const float* absmax,
                                           const unsigned char* qabsmax, const float* code2, const float* absmax2,
                                           float offset, int nested_bs, int fp4, i64 n, int blocksize)
{
    const float* lut = fp4 ? FP4_LUT : NF4_LUT;
    i64 bytes = (n + 1) / 2;
    GRID_STRIDE(i, bytes)
    {
        i64 e = 2 * i;
        float a = block_absmax(absmax, qabsmax, code2, absmax2, offset, nested_bs, e / blocksize);
        unsigned char packed = codes[i];
        float hi = __fmul_rn(lut[packed >> 4], a);
        float lo = __fmul_rn(lut[packed & 0x0F], a);
        if (dt == FT_BF16 && e + 1 < n)
        {
            unsigned pair = (unsigned)f32_to_bf16(hi) | ((unsigned)f32_to_bf16(lo) << 16);
            ((unsigned*)out)[i] = pair;
        }
        else
        {
            st(out, e, hi, dt);
            if (e + 1 < n) st(out, e + 1, lo, dt);
        }
    }
}

// LLM.int8 rows: w[r, j] = c[r, j]·(SCB[r]·(1/127)), as bnb's MatMul8bitLt backward dequantizes CB.
extern "C" __global__ void dequantize_int8(void* out, int dt, const signed char* codes, const float* scb, i64 n, int cols)
{
    GRID_STRIDE(i, n)
    {
        float s = __fmul_rn(scb[i / cols], 1.0f / 127.0f);
        st(out, i, __fmul_rn((float)codes[i], s), dt);
    }
}

// Bit tests instead of isfinite/signbit, so the kernel needs no math header under NVRTC.
__device__ __forceinline__ bool finite_f32(float x) { return (__float_as_uint(x) & 0x7f800000u) != 0x7f800000u; }
__device__ __forceinline__ bool negative_f32(float x) { return (__float_as_uint(x) >> 31) != 0u; }

// bnb's quantize_2D (see Optimizer8bit.Quantize): binary search from the middle, then the nearer neighbour by midpoint.
__device__ __forceinline__ unsigned char quantize_code(const float* code, float x, bool is_signed)
{
    int pivot = 127, upper_pivot = 255, lower_pivot = 0;
    float lower = is_signed ? -1.0f : 0.0f, upper = 1.0f;
    float val = code[pivot];
    for (int i = 64; i > 0; i >>= 1)
    {
        if (x > val) { lower_pivot = pivot; lower = val; pivot += i; }
        else { upper_pivot = pivot; upper = val; pivot -= i; }
        val = code[pivot];
    }
    if (x > val) return (unsigned char)(x > __fmul_rn(__fadd_rn(upper, val), 0.5f) ? upper_pivot : pivot);
    return (unsigned char)(x < __fmul_rn(__fadd_rn(lower, val), 0.5f) ? lower_pivot : pivot);
}

// One block of 256 threads per 256 values (bnb's kOptimizerStatic8bit2StateBlockwise<…, 256, 1>):
// dequantize m and v with the block's absmax, update them, take their new block absmax (elements past n count as
// g = 0 with m code 128, v code 0, as bnb loads them), update p, requantize with the new absmax.
extern "C" __global__ void adamw8bit_step(float* param, const float* grad, unsigned char* m8, unsigned char* v8,
                                          float* absmax_m, float* absmax_v, const float* code_m, const float* code_v,
                                          void* copy, int dt_copy, i64 n, float beta1, float beta2,
                                          float one_minus_beta1, float one_minus_beta2, float step_size,
                                          float eps_correction2, float decay, float grad_scale,
                                          const float* grad_norm_sq, float max_norm)
{
    // Clipping read on the device (no host round trip), with the host's operations (Optimizer8bit.Constants).
    if (max_norm > 0.0f && grad_norm_sq != nullptr)
    {
        float norm = __fmul_rn(grad_scale, __fsqrt_rn(*grad_norm_sq));
        float coef = __fdiv_rn(max_norm, __fadd_rn(norm, 1e-6f));
        if (coef < 1.0f) grad_scale = __fmul_rn(grad_scale, coef);
    }
    __shared__ float s_code_m[256], s_code_v[256];
    s_code_m[threadIdx.x] = code_m[threadIdx.x];
    s_code_v[threadIdx.x] = code_v[threadIdx.x];
    __syncthreads();
    i64 b = blockIdx.x;
    i64 i = b * 256 + threadIdx.x;
    bool inside = i < n;
    float g = inside ? grad[i] : 0.0f;
    unsigned char c1 = inside ? m8[i] : (unsigned char)128, c2 = inside ? v8[i] : (unsigned char)0;
    bool finite = finite_f32(g);
    float m = 0.0f, v = 0.0f;
    if (finite)
    {
        g = __fmul_rn(g, grad_scale);
        v = __fmul_rn(s_code_v[c2], absmax_v[b]);
        v = __fadd_rn(__fmul_rn(v, beta2), __fmul_rn(__fmul_rn(one_minus_beta2, g), g));
        m = __fmul_rn(s_code_m[c1], absmax_m[b]);
        m = __fadd_rn(__fmul_rn(m, beta1), __fmul_rn(one_minus_beta1, g));
    }
    float max1 = block_max(fabsf(m));
    float max2 = block_max(fabsf(v));
    __syncthreads();
    if (threadIdx.x == 0) { absmax_m[b] = max1; absmax_v[b] = max2; }
    if (!inside) return;
    if (finite)
    {
        float denom = __fadd_rn(__fsqrt_rn(v), eps_correction2);
        float p = __fadd_rn(param[i], __fmul_rn(step_size, __fdiv_rn(m, denom)));
        if (decay != 1.0f) p = __fmul_rn(p, decay);
        param[i] = p;
        if (copy != nullptr) st(copy, i, p, dt_copy);
    }
    unsigned char q1 = quantize_code(s_code_m, __fdiv_rn(m, max1), true);
    // Keep m's sign through quantization (bnb): step one code towards it when the code's sign differs.
    if (negative_f32(s_code_m[q1]) != negative_f32(m)) q1 = m > 0.0f ? (unsigned char)(q1 + 1) : (unsigned char)(q1 - 1);
    m8[i] = q1;
    v8[i] = quantize_code(s_code_v, __fdiv_rn(v, max2), false);
}
