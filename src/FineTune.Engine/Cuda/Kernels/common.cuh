// Shared helpers for FineTune's kernels. Self-contained (no CUDA headers), so NVRTC needs no include path.
// Tensors reach a kernel as a raw pointer plus a dtype code that matches FineTune.Engine.DType:
//   0 = F32, 1 = BF16, 2 = I32.
// Every load widens to float and every store rounds from float, so arithmetic is fp32 whatever the storage.
#pragma once

#define FT_F32 0
#define FT_BF16 1
#define FULL_MASK 0xffffffffu
#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

typedef long long i64;

__device__ __forceinline__ float bf16_to_f32(unsigned short h) { return __uint_as_float(((unsigned)h) << 16); }

// Round to nearest even, as torch's .to(torch.bfloat16).
__device__ __forceinline__ unsigned short f32_to_bf16(float f)
{
    unsigned short r;
    asm("cvt.rn.bf16.f32 %0, %1;" : "=h"(r) : "f"(f));
    return r;
}

__device__ __forceinline__ float ld(const void* p, i64 i, int dt)
{
    return dt == FT_BF16 ? bf16_to_f32(((const unsigned short*)p)[i]) : ((const float*)p)[i];
}

__device__ __forceinline__ void st(void* p, i64 i, float v, int dt)
{
    if (dt == FT_BF16) ((unsigned short*)p)[i] = f32_to_bf16(v);
    else ((float*)p)[i] = v;
}

__device__ __forceinline__ float warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
__device__ __forceinline__ float block_sum(float v)
{
    __shared__ float partial[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < warps ? partial[lane] : 0.0f;
    return warp_sum(v);
}

// Programmatic dependent launch (Hopper; CudaBackend.UseDependentLaunch): a kernel launched as dependent may start
// while the previous kernel on the stream finishes, and must pdl_wait() before it reads anything that kernel writes
// (it may read constants, e.g. a frozen weight, before); a kernel calls pdl_trigger() to let its dependent start that
// early (once every block of it has called it). Both are no-ops below sm_90 and for kernels launched plainly.
__device__ __forceinline__ void pdl_wait()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger()
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;");
#endif
}

// The GPU's nanosecond clock, the same on every SM (a kernel's trace points: decode.cu's decode_layer).
__device__ __forceinline__ unsigned long long globaltimer_ns()
{
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

// dst[0 … count) = src[0 … count) by every thread of the block, then a barrier: a GEMV block's input rows copied into
// its shared memory once (decode.cu's gemv_residual, gemv.cu's staged form), read from there by every warp.
__device__ __forceinline__ void block_stage(uint4* dst, const uint4* src, int count)
{
    for (int i = threadIdx.x; i < count; i += blockDim.x) dst[i] = src[i];
    __syncthreads();
}

// Warms L2 with bytes [p, p + bytes) of a constant (a frozen weight), one prefetch.global.L2 per 128-byte line (the
// PTX ISA: the line holding the address), lane l taking lines l, l + 32, …: what a dependent-launched kernel does
// before pdl_wait() with the weight it will stream, so that DRAM works for it while the kernel before it drains. A
// hint only, no value read or written changes; a no-op below sm_90 (no dependent launches there).
#define PREFETCH_LINE 128
__device__ __forceinline__ void prefetch_l2(const void* p, i64 bytes, int lane)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    for (i64 o = (i64)lane * PREFETCH_LINE; o < bytes; o += 32 * PREFETCH_LINE)
        asm volatile("prefetch.global.L2 [%0];" :: "l"((const char*)p + o));
#endif
}

// Σ v[0 .. count) by one block in an order fixed by count and blockDim alone (thread i sums i, i+blockDim, …, then
// block_sum's tree): the reductions that used to add block results with atomicAdd — whose order followed the blocks'
// timing, so a training run's last bits changed run to run — go through this instead.
__device__ __forceinline__ float ordered_sum(const float* v, i64 count)
{
    float s = 0.0f;
    for (i64 i = threadIdx.x; i < count; i += blockDim.x) s += v[i];
    return block_sum(s);
}

__device__ __forceinline__ float block_max(float v)
{
    __shared__ float partial[32];
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < warps ? partial[lane] : -INFINITY;
    return warp_max(v);
}

#define GRID_STRIDE(i, n) for (i64 i = (i64)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (i64)gridDim.x * blockDim.x)

// Eight bf16 values in one 16-byte load/store (the vectorised fast paths: all operands bf16, 16-byte aligned,
// lengths multiples of 8). The arithmetic per element is the scalar kernels' own: widen, fp32, round to nearest even.
__device__ __forceinline__ void unpack8(uint4 v, float* f)
{
    unsigned w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; i++) { f[2 * i] = __uint_as_float(w[i] << 16); f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u); }
}

__device__ __forceinline__ uint4 pack8(const float* f)
{
    unsigned w[4];
#pragma unroll
    for (int i = 0; i < 4; i++) w[i] = (unsigned)f32_to_bf16(f[2 * i]) | ((unsigned)f32_to_bf16(f[2 * i + 1]) << 16);
    return make_uint4(w[0], w[1], w[2], w[3]);
}

// RMSNorm of bf16 rows eight values at a time (cols a multiple of 8), shared by rmsnorm_forward_v8 and the decode
// kernels so both give the same bits: a row's 1/sqrt(mean(x²) + eps) summed by one warp (lane c, c + 32, …), and one
// 16-byte chunk of the output x·inv·(w + off).
__device__ __forceinline__ float rms_rstd_v8(const uint4* xr, int cols, float eps, int lane)
{
    float ss = 0.0f;
    for (int c = lane; c < (cols >> 3); c += 32)
    {
        float v[8]; unpack8(xr[c], v);
#pragma unroll
        for (int j = 0; j < 8; j++) ss += v[j] * v[j];
    }
    ss = warp_sum(ss);
    return rsqrtf(ss / cols + eps);
}

__device__ __forceinline__ uint4 rms_scale_v8(uint4 x, uint4 w, float inv, float off)
{
    float v[8], g[8]; unpack8(x, v); unpack8(w, g);
#pragma unroll
    for (int j = 0; j < 8; j++) v[j] = v[j] * inv * (g[j] + off);
    return pack8(v);
}

// One head of a decode step's q or k, by one warp (decode.cu's qk_rope_cache and kv_cache.cu's rope-and-attention
// form share it, so both give the same bits): lane l < D/8 holds elements 8l … 8l+7 (its chunk src, read when the
// lane has one; D = 64, 128 or 256), RMS-normed over the head when nw is given (qwen3's q_norm/k_norm; 1/rms left in
// *inv, else 0) and rounded as stored, then rotated at position pos by rope_apply's rotate-half arithmetic (the partner
// half D/16 lanes away; a position outside [0, max_pos) leaves the head unrotated). Every lane calls it (shuffles).
__device__ __forceinline__ void head_norm_rope_v8(float (&x)[8], const uint4* src, const uint4* nw, float eps, float off, int D, int lane,
                                                  float* inv, int pos, const float* cos_t, const float* sin_t, int max_pos)
{
    int c8 = D >> 3, half = D >> 1, hc = c8 >> 1;
    bool mine = lane < c8;
    if (mine) unpack8(*src, x);
    else
    {
#pragma unroll
        for (int j = 0; j < 8; j++) x[j] = 0.0f;
    }
    *inv = 0.0f;
    if (nw != nullptr)
    {
        float ss = 0.0f;
#pragma unroll
        for (int j = 0; j < 8; j++) ss += x[j] * x[j];
        ss = warp_sum(ss);
        *inv = rsqrtf(ss / D + eps);
        if (mine)
        {
            float g[8]; unpack8(nw[lane], g);
#pragma unroll
            for (int j = 0; j < 8; j++) x[j] = x[j] * *inv * (g[j] + off);
            unpack8(pack8(x), x); // the normed head as stored
        }
    }
    float p[8];
#pragma unroll
    for (int j = 0; j < 8; j++) p[j] = __shfl_xor_sync(FULL_MASK, x[j], hc);
    if (mine && pos >= 0 && pos < max_pos)
    {
        bool first = lane < hc;
        int i0 = (first ? lane : lane - hc) * 8;
        const float* co = cos_t + (i64)pos * half + i0;
        const float* si = sin_t + (i64)pos * half + i0;
#pragma unroll
        for (int j = 0; j < 8; j++)
        {
            float s = 1.0f * si[j];
            // first half: x_i·cos − x_{i+h}·sin; second half: x_{i+h}·cos + x_i·sin (x is this lane's, p the partner's)
            x[j] = first ? x[j] * co[j] - p[j] * s : x[j] * co[j] + p[j] * s;
        }
    }
}

// Packed sequences: segment ids mark which sequence each position belongs to (contiguous runs). Both helpers are
// called by a whole warp (ballots over 32 positions at a time) and return the same value in every lane.
// First position of the segment holding position p.
__device__ __forceinline__ int segment_start(const int* seg, int p)
{
    int id = seg[p], lane = threadIdx.x & 31;
    for (int base = p; base >= 0; base -= 32)
    {
        int j = base - lane;
        unsigned diff = __ballot_sync(FULL_MASK, j >= 0 && seg[j] != id);
        if (diff) return base - (__ffs(diff) - 1) + 1;
    }
    return 0;
}

// One past the last position of the segment holding p (positions < len).
__device__ __forceinline__ int segment_end(const int* seg, int p, int len)
{
    int id = seg[p], lane = threadIdx.x & 31;
    for (int base = p; base < len; base += 32)
    {
        int j = base + lane;
        unsigned stop = __ballot_sync(FULL_MASK, j >= len || seg[j] != id);
        if (stop) return base + (__ffs(stop) - 1);
    }
    return len;
}
