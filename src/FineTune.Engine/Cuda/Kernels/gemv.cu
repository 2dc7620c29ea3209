// Products with few rows (decode steps: one row per sequence): C[m, n] = alpha·Σ_k A[m, k]·B[n, k] (+ C), A [M, K] and
// the weight B [N, K] in bf16, fp32 accumulation, C bf16 or f32. One warp per output column n reads B's row n once, 16
// bytes per lane per load (the weight is the traffic; A's few rows stay in L1), for all M ≤ GEMV_MAX_M rows at once,
// then a warp sum per row. Every lane issues GEMV_U loads of the weight (through the streaming, L1-bypassing path)
// before any arithmetic, so a multiprocessor holding one block of 8 warps keeps 32 KiB of the weight on the way: a
// load used at once left the H200 at under a third of its bandwidth (docs/cuda.md). cuBLASLt's kernels at M = 1 leave
// much of the bandwidth unused too; at M = 8 they beat this kernel (its A reads per weight chunk grow with M), so the
// backend sends only the smallest M here (CudaBackend.MatMul.cs). Under programmatic dependent launch (pf = 1,
// CudaBackend.UseDependentLaunch) a warp also prefetches the rest of its weight row into L2 before it waits for the
// kernel before it (a hint: the bits are a plain launch's), and every kernel here lets its own dependent launch at once.
#include "common.cuh"

#define GEMV_MAX_M 8
#define GEMV_WARPS 8
#define GEMV_U 8

// Column n of C for rows 0 … M−1, by one warp. Requires K % 8 == 0 and A, B 16-byte aligned (the launcher checks).
__device__ __forceinline__ void gemv_column(void* c, int dt_c, const unsigned short* a, const unsigned short* b, int M, int N, int K,
                                            int n, float alpha, int accumulate, int lane, int pf)
{
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
        // Launched as a dependent (CudaBackend.UseDependentLaunch), the weight's first loads (and with pf the rest of
        // the row, into L2) overlap the previous kernel; A and C are read only after it has finished.
        if (q0 == 0)
        {
            if (pf && chunks > 32 * GEMV_U) prefetch_l2(brow + 32 * GEMV_U, (i64)(chunks - 32 * GEMV_U) * 16, lane);
            pdl_wait();
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

extern "C" __global__ void gemv_bf16(void* c, int dt_c, const unsigned short* a, const unsigned short* b, int M, int N, int K,
                                     float alpha, int accumulate, int pf)
{
    pdl_trigger();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int n = blockIdx.x * GEMV_WARPS + warp;
    if (n < N) gemv_column(c, dt_c, a, b, M, N, K, n, alpha, accumulate, lane, pf);
}

// Up to three products sharing A (a layer's q/k/v, or gate/up) in one launch: C_i = A·B_iᵀ, B_i [N_i, K]; warp w of
// the grid takes column w of the products laid end to end. Each column's arithmetic is gemv_bf16's, so the fused and
// the separate launches give the same bits.
extern "C" __global__ void gemv_bf16_set(const unsigned short* a, int M, int K, int count,
                                         void* c0, int dt_c0, const unsigned short* b0, int n0,
                                         void* c1, int dt_c1, const unsigned short* b1, int n1,
                                         void* c2, int dt_c2, const unsigned short* b2, int n2, int pf)
{
    pdl_trigger();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int n = blockIdx.x * GEMV_WARPS + warp;
    if (n < n0) { gemv_column(c0, dt_c0, a, b0, M, n0, K, n, 1.0f, 0, lane, pf); return; }
    n -= n0;
    if (count > 1 && n < n1) { gemv_column(c1, dt_c1, a, b1, M, n1, K, n, 1.0f, 0, lane, pf); return; }
    n -= n1;
    if (count > 2 && n < n2) gemv_column(c2, dt_c2, a, b2, M, n2, K, n, 1.0f, 0, lane, pf);
}
