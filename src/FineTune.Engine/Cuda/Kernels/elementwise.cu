// Elementwise operations: dtype conversion, axpy, scale, bias add and its backward, dropout, noise.
#include "common.cuh"

// dst = src, converting between F32 and BF16.
extern "C" __global__ void ft_copy(void* dst, int dt_dst, const void* src, int dt_src, i64 n)
{
    GRID_STRIDE(i, n) st(dst, i, ld(src, i, dt_src), dt_dst);
}

// y += alpha·x
extern "C" __global__ void ft_add(void* y, int dt_y, const void* x, int dt_x, float alpha, i64 n)
{
    GRID_STRIDE(i, n) st(y, i, ld(y, i, dt_y) + alpha * ld(x, i, dt_x), dt_y);
}

// x *= s
extern "C" __global__ void ft_scale(void* x, int dt, float s, i64 n)
{
    GRID_STRIDE(i, n) st(x, i, ld(x, i, dt) * s, dt);
}

// y[r, c] += bias[c]
extern "C" __global__ void ft_add_bias(void* y, int dt_y, const void* bias, int dt_b, i64 n, int cols)
{
    GRID_STRIDE(i, n) st(y, i, ld(y, i, dt_y) + ld(bias, i % cols, dt_b), dt_y);
}

// dbias[c] += Σ_r dy[r, c]: one thread per column, rows in order (deterministic, coalesced across the warp).
extern "C" __global__ void ft_bias_backward(void* dbias, int dt_db, const void* dy, int dt_dy, int rows, int cols)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float acc = 0.0f;
    for (int r = 0; r < rows; r++) acc += ld(dy, (i64)r * cols + c, dt_dy);
    st(dbias, c, ld(dbias, c, dt_db) + acc, dt_db);
}

// SplitMix64 finaliser of (seed, index) → uniform in [0, 1) with 24 bits; the CPU backend computes the same bits.
__device__ __forceinline__ float uniform01(unsigned long long seed, i64 index)
{
    unsigned long long z = seed + 0x9E3779B97F4A7C15ull * (unsigned long long)(index + 1);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    return (float)(z >> 40) * (1.0f / 16777216.0f);
}

// y = x ⊙ [u ≥ p] / (1 − p)
extern "C" __global__ void ft_dropout(void* y, int dt_y, const void* x, int dt_x, float p, unsigned long long seed, i64 n)
{
    float keep = 1.0f / (1.0f - p);
    GRID_STRIDE(i, n) st(y, i, uniform01(seed, i) >= p ? ld(x, i, dt_x) * keep : 0.0f, dt_y);
}

// x += magnitude·(2u − 1)
extern "C" __global__ void ft_uniform_noise(void* x, int dt, float magnitude, unsigned long long seed, i64 n)
{
    GRID_STRIDE(i, n) st(x, i, ld(x, i, dt) + magnitude * (2.0f * uniform01(seed, i) - 1.0f), dt);
}

// y += alpha·x, bf16 fast path (n8 = n / 8).
extern "C" __global__ void ft_add_v8(uint4* y, const uint4* x, float alpha, i64 n8)
{
    GRID_STRIDE(i, n8)
    {
        float a[8], b[8];
        unpack8(y[i], a); unpack8(x[i], b);
#pragma unroll
        for (int j = 0; j < 8; j++) a[j] = a[j] + alpha * b[j];
        y[i] = pack8(a);
    }
}
