// Products with few rows (decode steps: one row per sequence): C[m, n] = alpha·Σ_k A[m, k]·B[n, k] (+ C), A [M, K] and
// the weight B [N, K] in bf16, fp32 accumulation, C bf16 or f32. One warp per output column n (or C of them in turn,
// CudaBackend.DecodeColumns: gemv_columns) reads B's row n once, 16
// bytes per lane per load (the weight is the traffic; A's few rows stay in L1), for all M ≤ GEMV_MAX_M rows at once,
// then a warp sum per row. Every lane issues GEMV_U loads of the weight (through the streaming, L1-bypassing path)
// before any arithmetic, so a multiprocessor holding one block of 8 warps keeps 32 KiB of the weight on the way: a
// load used at once left the H200 at under a third of its bandwidth (docs/cuda.md). cuBLASLt's kernels at M = 1 leave
// much of the bandwidth unused too; at M = 8 they beat this kernel (its A reads per weight chunk grow with M), so the
// backend sends only the smallest M here (CudaBackend.MatMul.cs). Under programmatic dependent launch (pf = 1,
// CudaBackend.UseDependentLaunch) a warp also prefetches the rest of its weight row into L2 before it waits for the
// kernel before it (a hint: the bits are a plain launch's), and every kernel here lets its own dependent launch at once.
// With staged (the launcher's choice: M·K bf16 within CudaBackend.GemvMaxSharedBytes) a block first copies A into
// shared memory and the products read it there: from global memory each lane's A loads queue behind the weight's
// streaming loads (H200, 2026-12-04: the LM head's 151,936×2,048 at one row 137 against 147 µs, 4,096×14,336 32
// against 41 µs; docs/serving.md). Only where A is read from changes, so staged or not the bits are the same.
#include "common.cuh"

#define GEMV_MAX_M 8
#define GEMV_WARPS 8
#define GEMV_U 8

// One batch of a weight row's 16-byte chunks, GEMV_U per lane (zeros past the row).
__device__ __forceinline__ void gemv_load(uint4 (&w)[GEMV_U], const uint4* brow, int q0, int chunks, int lane)
{
#pragma unroll
    for (int u = 0; u < GEMV_U; u++)
    {
        int q = q0 + u * 32 + lane;
        w[u] = q < chunks ? __ldcs(brow + q) : make_uint4(0u, 0u, 0u, 0u);
    }
}

// acc[m] += the batch's dot products with rows m of A (A [M, K] in global or, staged, in shared memory: the same sums).
__device__ __forceinline__ void gemv_fma(float (&acc)[GEMV_MAX_M], const uint4 (&w)[GEMV_U], const unsigned short* a, int M, int K, int q0,
                                         int chunks, int lane)
{
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

// The column loop of gemv_columns from its first column on (w: that column's first batch), A read at a.
template <class Rows, class Done>
__device__ __forceinline__ void gemv_column_loop(uint4 (&w)[GEMV_U], Rows rows, Done done, const unsigned short* a, int M, int K, int col, int N,
                                                 int G, int C, int lane)
{
    int chunks = K >> 3;
    const uint4* brow = rows(col);
    for (int i = 0;; i++)
    {
        int ncol = col + G;
        bool next_col = i + 1 < C && ncol < N;
        float acc[GEMV_MAX_M];
#pragma unroll
        for (int m = 0; m < GEMV_MAX_M; m++) acc[m] = 0.0f;
        for (int q0 = 0; q0 < chunks; q0 += 32 * GEMV_U)
        {
            if (q0 > 0) gemv_load(w, brow, q0, chunks, lane);
            gemv_fma(acc, w, a, M, K, q0, chunks, lane);
            if (next_col && q0 + 32 * GEMV_U >= chunks) gemv_load(w, rows(ncol), 0, chunks, lane);
        }
        done(col, acc);
        if (!next_col) return;
        col = ncol;
        brow = rows(col);
    }
}

// Columns col, col + G, col + 2G, … (G: the grid's warps; at most C of them, all below N) of C for rows 0 … M−1, by
// one warp (C = CudaBackend.DecodeColumns; 1: one column a warp, the kernel as before). rows(col): column col's weight
// row; done(col, acc): its sums (warp_sum, store). Requires K % 8 == 0 and A, B 16-byte aligned (the launcher checks).
// Called by every warp of the block (a warp with col ≥ N helps stage A, then returns). With C > 1 the next column's
// first batch is loaded right after the current column's last batch arithmetic, so it is
// in flight during that column's warp_sum and store instead of being issued after them (a column of the LM head's K =
// 2048 is one batch: one column a warp paid a whole memory latency per column with nothing in flight). The batch loads
// into the buffer the arithmetic has just finished with (a second buffer would cost GEMV_U·4 registers a thread at
// every C). Same bits for every C: a column's acc starts at 0 and takes its batches in order from the same chunks,
// with the same warp_sum and store; only when a load is issued moves (decode.cu's dec_columns makes the same argument).
template <class Rows, class Done>
__device__ __forceinline__ void gemv_columns(Rows rows, Done done, const unsigned short* a, uint4* as, int staged, int M, int K, int col, int N,
                                             int G, int C, int lane, int pf)
{
    int chunks = K >> 3;
    uint4 w[GEMV_U];
    if (col < N)
    {
        const uint4* brow = rows(col);
        gemv_load(w, brow, 0, chunks, lane);
        // Launched as a dependent (CudaBackend.UseDependentLaunch), the weight's first loads (and with pf the rest of
        // the warp's rows, into L2) overlap the previous kernel; A and C are read only after it has finished.
        if (pf)
        {
            if (chunks > 32 * GEMV_U) prefetch_l2(brow + 32 * GEMV_U, (i64)(chunks - 32 * GEMV_U) * 16, lane);
            for (int i = 1; i < C && col + i * G < N; i++) prefetch_l2(rows(col + i * G), (i64)chunks * 16, lane);
        }
    }
    pdl_wait();
    if (staged)
    {
        block_stage(as, (const uint4*)a, M * chunks);
        if (col < N) gemv_column_loop(w, rows, done, (const unsigned short*)as, M, K, col, N, G, C, lane);
    }
    else if (col < N) gemv_column_loop(w, rows, done, a, M, K, col, N, G, C, lane);
}

// Column col's sums into C: alpha·s (+ C).
__device__ __forceinline__ void gemv_store(void* c, int dt_c, int M, int N, int col, float alpha, int accumulate, const float (&acc)[GEMV_MAX_M], int lane)
{
#pragma unroll
    for (int m = 0; m < GEMV_MAX_M; m++)
    {
        if (m >= M) break;
        float s = warp_sum(acc[m]);
        if (lane == 0)
        {
            i64 i = (i64)m * N + col;
            float v = alpha * s;
            if (accumulate) v += ld(c, i, dt_c);
            st(c, i, v, dt_c);
        }
    }
}

extern "C" __global__ void gemv_bf16(void* c, int dt_c, const unsigned short* a, const unsigned short* b, int M, int N, int K,
                                     float alpha, int accumulate, int pf, int C, int staged)
{
    extern __shared__ uint4 as[];
    pdl_trigger();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int n = blockIdx.x * GEMV_WARPS + warp, G = gridDim.x * GEMV_WARPS;
    auto row = [&](int col) { return (const uint4*)(b + (i64)col * K); };
    auto done = [&](int col, const float (&acc)[GEMV_MAX_M]) { gemv_store(c, dt_c, M, N, col, alpha, accumulate, acc, lane); };
    gemv_columns(row, done, a, as, staged, M, K, n, N, G, C, lane, pf);
}

// Up to three products sharing A (a layer's q/k/v, or gate/up) in one launch: C_i = A·B_iᵀ, B_i [N_i, K]; the columns
// of the products laid end to end, C to a warp (a warp's next column may be the next product's). Each column's
// arithmetic is gemv_bf16's, so the fused and the separate launches give the same bits.
extern "C" __global__ void gemv_bf16_set(const unsigned short* a, int M, int K, int count,
                                         void* c0, int dt_c0, const unsigned short* b0, int n0,
                                         void* c1, int dt_c1, const unsigned short* b1, int n1,
                                         void* c2, int dt_c2, const unsigned short* b2, int n2, int pf, int C, int staged)
{
    extern __shared__ uint4 as[];
    pdl_trigger();
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int n = blockIdx.x * GEMV_WARPS + warp, G = gridDim.x * GEMV_WARPS;
    int total = n0 + (count > 1 ? n1 : 0) + (count > 2 ? n2 : 0);
    // Column col (< total) of the products end to end: product j's column col − n0 − ….
    auto row = [&](int col)
    {
        if (col < n0) return (const uint4*)(b0 + (i64)col * K);
        col -= n0;
        return (const uint4*)(col < n1 ? b1 + (i64)col * K : b2 + (i64)(col - n1) * K);
    };
    auto done = [&](int col, const float (&acc)[GEMV_MAX_M])
    {
        if (col < n0) { gemv_store(c0, dt_c0, M, n0, col, 1.0f, 0, acc, lane); return; }
        col -= n0;
        if (col < n1) gemv_store(c1, dt_c1, M, n1, col, 1.0f, 0, acc, lane);
        else gemv_store(c2, dt_c2, M, n2, col - n1, 1.0f, 0, acc, lane);
    };
    gemv_columns(row, done, a, as, staged, M, K, n, total, G, C, lane, pf);
}
