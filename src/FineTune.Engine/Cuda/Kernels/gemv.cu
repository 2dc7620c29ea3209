// Products with few rows (decode steps: one row per sequence): C[m, n] = alpha·Σ_k A[m, k]·B[n, k] (+ C), A [M, K] and
// the weight B [N, K] in bf16, fp32 accumulation, C bf16 or f32. One warp per output column n reads B's row n once, 16
// bytes per lane per load (the weight is the traffic; A's few rows stay in L1), for all M ≤ GEMV_MAX_M rows at once,
// then a warp sum per row. cuBLASLt's kernels at M = 1 … 8 leave much of the memory bandwidth unused.
#include "common.cuh"

#define GEMV_MAX_M 8
#define GEMV_WARPS 8

// Requires K % 8 == 0 and A, B 16-byte aligned (the launcher checks).
extern "C" __global__ void gemv_bf16(void* c, int dt_c, const unsigned short* a, const unsigned short* b, int M, int N, int K,
                                     float alpha, int accumulate)
{
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int n = blockIdx.x * GEMV_WARPS + warp;
    if (n >= N) return;
    float acc[GEMV_MAX_M];
#pragma unroll
    for (int m = 0; m < GEMV_MAX_M; m++) acc[m] = 0.0f;
    const uint4* brow = (const uint4*)(b + (i64)n * K);
    int chunks = K >> 3;
#pragma unroll 4
    for (int q = lane; q < chunks; q += 32)
    {
        float wv[8];
        unpack8(brow[q], wv);
#pragma unroll
        for (int m = 0; m < GEMV_MAX_M; m++)
        {
            if (m >= M) break;
            float av[8];
            unpack8(((const uint4*)(a + (i64)m * K))[q], av);
            float s = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; j++) s += wv[j] * av[j];
            acc[m] += s;
        }
    }
#pragma unroll
    for (int m = 0; m < GEMV_MAX_M; m++)
    {
        if (m >= M) break;
        float s = warp_sum(acc[m]);
        if (lane == 0)
        {
            i64 i = (i64)m * N + n;
            float v = alpha * s;
            if (accumulate) v += ld(c, i, dt_c);
            st(c, i, v, dt_c);
        }
    }
}

// The same product with every lane's loads of the weight issued before any arithmetic: GEMV_U chunks of 16 bytes per
// lane in flight (the weight read through the streaming, L1-bypassing path), so a multiprocessor holding one block of
// 8 warps keeps 32 KiB of the weight on the way — what a load of 16 bytes at a time, used at once, does not.
// FINETUNE_GEMV=2 (measured against gemv_bf16 in `bench --generate --profile`).
#define GEMV_U 8
extern "C" __global__ void gemv_bf16_wide(void* c, int dt_c, const unsigned short* a, const unsigned short* b, int M, int N, int K,
                                          float alpha, int accumulate)
{
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int n = blockIdx.x * GEMV_WARPS + warp;
    if (n >= N) return;
    float acc[GEMV_MAX_M];
#pragma unroll
    for (int m = 0; m < GEMV_MAX_M; m++) acc[m] = 0.0f;
    const uint4* brow = (const uint4*)(b + (i64)n * K);
    int chunks = K >> 3;
    for (int q0 = 0; q0 < chunks; q0 += 32 * GEMV_U)
    {
        uint4 w[GEMV_U];
#pragma unroll
        for (int u = 0; u < GEMV_U; u++)
        {
            int q = q0 + u * 32 + lane;
            w[u] = q < chunks ? __ldcs(brow + q) : make_uint4(0u, 0u, 0u, 0u);
        }
#pragma unroll
        for (int u = 0; u < GEMV_U; u++)
        {
            int q = q0 + u * 32 + lane;
            if (q >= chunks) continue;
            float wv[8];
            unpack8(w[u], wv);
#pragma unroll
            for (int m = 0; m < GEMV_MAX_M; m++)
            {
                if (m >= M) break;
                float av[8];
                unpack8(((const uint4*)(a + (i64)m * K))[q], av);
                float s = 0.0f;
#pragma unroll
                for (int j = 0; j < 8; j++) s += wv[j] * av[j];
                acc[m] += s;
            }
        }
    }
#pragma unroll
    for (int m = 0; m < GEMV_MAX_M; m++)
    {
        if (m >= M) break;
        float s = warp_sum(acc[m]);
        if (lane == 0)
        {
            i64 i = (i64)m * N + n;
            float v = alpha * s;
            if (accumulate) v += ld(c, i, dt_c);
            st(c, i, v, dt_c);
        }
    }
}
