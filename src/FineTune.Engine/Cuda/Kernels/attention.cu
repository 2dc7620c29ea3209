// Causal grouped-query attention with segment masks (packed sequences), the simple exact version:
// one warp per query row (forward, dq) or key row (dk, dv), keys or queries taken 32 at a time, one per lane,
// with an online softmax, so the T×T score matrix never reaches device memory.
// Layouts: q [B, QL, Hq, D]; k, v [B, KvCap, Hkv, D]; out like q; lse [B, Hq, QL] (F32); seg [B, KvCap] (I32).
// Query i sits at key position p = KL − QL + i and attends to keys j ≤ p with seg[j] == seg[p] (and p − j < window
// when window > 0: sliding-window layers). cap > 0 soft-caps the scaled scores: c = cap·tanh(s/cap), ∂c/∂s = 1 − tanh².
// Query head h reads KV head h / (Hq / Hkv).
#include "attention_row.cuh"

#define ROWS_PER_BLOCK 8
#define MAX_D ATTENTION_MAX_D
#define MAX_E ATTENTION_MAX_E

extern "C" __global__ void attention_forward(void* out, int dt_o, float* lse, const void* q, int dt_q, const void* k, int dt_k,
                                             const void* v, int dt_v, const int* seg_ids,
                                             int QL, int KL, int kv_cap, int Hq, int Hkv, int D, float scale, int window, float cap)
{
    __shared__ float qs[ROWS_PER_BLOCK][MAX_D];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int i = blockIdx.x * ROWS_PER_BLOCK + warp;
    if (i >= QL) return;               // whole warps leave; no block-wide barrier below
    int h = blockIdx.y, b = blockIdx.z, kh = h / (Hq / Hkv);
    int p = KL - QL + i;
    const int* seg = seg_ids + (i64)b * kv_cap;
    int start = segment_start(seg, p);
    if (window > 0) start = max(start, p - window + 1);
    i64 qrow = (((i64)b * QL + i) * Hq + h) * D;
    for (int d = lane; d < D; d += 32) qs[warp][d] = ld(q, qrow + d, dt_q) * scale;
    __syncwarp();
    i64 kstride = (i64)Hkv * D, kbase = (i64)b * kv_cap * kstride + (i64)kh * D;
    float acc[MAX_E], m, l;
    attention_row(qs[warp], k, dt_k, v, dt_v, kbase, kstride, start, p, D, lane, cap, acc, m, l);
    float inv = 1.0f / l;
#pragma unroll
    for (int e = 0; e < MAX_E; e++)
        if (lane + 32 * e < D) st(out, qrow + lane + 32 * e, acc[e] * inv, dt_o);
    if (lane == 0) lse[((i64)b * Hq + h) * QL + i] = m + logf(l);
}

// delta[b, h, i] = dO_i · O_i (the row term of the softmax backward).
extern "C" __global__ void attention_backward_delta(float* delta, const void* dout, int dt_do, const void* out, int dt_o,
                                                    int B, int T, int Hq, int D)
{
    int row = blockIdx.x * ROWS_PER_BLOCK + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= B * T * Hq) return;     // row = (b·T + i)·Hq + h
    i64 base = (i64)row * D;
    float s = 0.0f;
    for (int d = lane; d < D; d += 32) s += ld(dout, base + d, dt_do) * ld(out, base + d, dt_o);
    s = warp_sum(s);
    if (lane == 0)
    {
        int h = row % Hq, bi = row / Hq, b = bi / T, i = bi % T;
        delta[((i64)b * Hq + h) * T + i] = s;
    }
}

// P_ij = exp(scale·q_i·k_j − lse_i), dP_ij = dO_i·v_j, dS_ij = P_ij·(dP_ij − delta_i);
// dq_i = scale·Σ_j dS_ij·k_j. One warp per query row, keys 32 at a time.
extern "C" __global__ void attention_backward_dq(void* dq, int dt_dq, const void* dout, int dt_do, const float* lse, const float* delta,
                                                 const void* q, int dt_q, const void* k, int dt_k, const void* v, int dt_v,
                                                 const int* seg_ids, int T, int Hq, int Hkv, int D, float scale, int window, float cap)
{
    __shared__ float qs[ROWS_PER_BLOCK][MAX_D];
    __shared__ float dos[ROWS_PER_BLOCK][MAX_D];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int i = blockIdx.x * ROWS_PER_BLOCK + warp;
    if (i >= T) return;
    int h = blockIdx.y, b = blockIdx.z, kh = h / (Hq / Hkv);
    const int* seg = seg_ids + (i64)b * T;
    int start = segment_start(seg, i);
    if (window > 0) start = max(start, i - window + 1);
    i64 qrow = (((i64)b * T + i) * Hq + h) * D;
    for (int d = lane; d < D; d += 32) { qs[warp][d] = ld(q, qrow + d, dt_q) * scale; dos[warp][d] = ld(dout, qrow + d, dt_do); }
    __syncwarp();
    float li = lse[((i64)b * Hq + h) * T + i], di = delta[((i64)b * Hq + h) * T + i];
    float acc[MAX_E];
#pragma unroll
    for (int e = 0; e < MAX_E; e++) acc[e] = 0.0f;
    i64 kstride = (i64)Hkv * D, kbase = (i64)b * T * kstride + (i64)kh * D;
    for (int j0 = start; j0 <= i; j0 += 32)
    {
        int j = j0 + lane;
        float ds = 0.0f;
        if (j <= i)
        {
            float s = 0.0f, dp = 0.0f;
            i64 krow = kbase + j * kstride;
            for (int d = 0; d < D; d++) { s += qs[warp][d] * ld(k, krow + d, dt_k); dp += dos[warp][d] * ld(v, krow + d, dt_v); }
            float dc = 1.0f;
            if (cap > 0.0f) { float t = tanhf(s / cap); s = cap * t; dc = 1.0f - t * t; }
            ds = expf(s - li) * (dp - di) * dc * scale;
        }
        int count = min(32, i - j0 + 1);
        for (int jj = 0; jj < count; jj++)
        {
            float dsj = __shfl_sync(FULL_MASK, ds, jj);
            i64 krow = kbase + (i64)(j0 + jj) * kstride;
#pragma unroll
            for (int e = 0; e < MAX_E; e++)
                if (lane + 32 * e < D) acc[e] += dsj * ld(k, krow + lane + 32 * e, dt_k);
        }
    }
#pragma unroll
    for (int e = 0; e < MAX_E; e++)
        if (lane + 32 * e < D) st(dq, qrow + lane + 32 * e, acc[e], dt_dq);
}

// dv_j = Σ_h Σ_i P_ij·dO_i, dk_j = scale·Σ_h Σ_i dS_ij·q_i over the query heads h of KV head kh and the queries
// i ≥ j of j's segment. One warp per key row, queries 32 at a time; no atomics, so the sums are deterministic.
extern "C" __global__ void attention_backward_dkv(void* dk, int dt_dk, void* dv, int dt_dv, const void* dout, int dt_do,
                                                  const float* lse, const float* delta, const void* q, int dt_q,
                                                  const void* k, int dt_k, const void* v, int dt_v,
                                                  const int* seg_ids, int T, int Hq, int Hkv, int D, float scale, int window, float cap)
{
    __shared__ float ks[ROWS_PER_BLOCK][MAX_D];
    __shared__ float vs[ROWS_PER_BLOCK][MAX_D];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int j = blockIdx.x * ROWS_PER_BLOCK + warp;
    if (j >= T) return;
    int kh = blockIdx.y, b = blockIdx.z, group = Hq / Hkv;
    const int* seg = seg_ids + (i64)b * T;
    int end = segment_end(seg, j, T);
    if (window > 0) end = min(end, j + window);   // queries i with i − j < window
    i64 krow = (((i64)b * T + j) * Hkv + kh) * D;
    for (int d = lane; d < D; d += 32) { ks[warp][d] = ld(k, krow + d, dt_k) * scale; vs[warp][d] = ld(v, krow + d, dt_v); }
    __syncwarp();
    float accK[MAX_E], accV[MAX_E];
#pragma unroll
    for (int e = 0; e < MAX_E; e++) { accK[e] = 0.0f; accV[e] = 0.0f; }
    i64 qstride = (i64)Hq * D;
    for (int h = kh * group; h < (kh + 1) * group; h++)
    {
        i64 qbase = (i64)b * T * qstride + (i64)h * D;
        const float* lse_h = lse + ((i64)b * Hq + h) * T;
        const float* delta_h = delta + ((i64)b * Hq + h) * T;
        for (int i0 = j; i0 < end; i0 += 32)
        {
            int i = i0 + lane;
            float pij = 0.0f, ds = 0.0f;
            if (i < end)
            {
                float s = 0.0f, dp = 0.0f;
                i64 qrow = qbase + i * qstride;
                for (int d = 0; d < D; d++) { s += ks[warp][d] * ld(q, qrow + d, dt_q); dp += vs[warp][d] * ld(dout, qrow + d, dt_do); }
                float dc = 1.0f;
                if (cap > 0.0f) { float t = tanhf(s / cap); s = cap * t; dc = 1.0f - t * t; }
                pij = expf(s - lse_h[i]);
                ds = pij * (dp - delta_h[i]) * dc * scale;
            }
            int count = min(32, end - i0);
            for (int ii = 0; ii < count; ii++)
            {
                float p = __shfl_sync(FULL_MASK, pij, ii), g = __shfl_sync(FULL_MASK, ds, ii);
                i64 qrow = qbase + (i64)(i0 + ii) * qstride;
#pragma unroll
                for (int e = 0; e < MAX_E; e++)
                    if (lane + 32 * e < D)
                    {
                        accV[e] += p * ld(dout, qrow + lane + 32 * e, dt_do);
                        accK[e] += g * ld(q, qrow + lane + 32 * e, dt_q);
                    }
            }
        }
    }
#pragma unroll
    for (int e = 0; e < MAX_E; e++)
        if (lane + 32 * e < D) { st(dk, krow + lane + 32 * e, accK[e], dt_dk); st(dv, krow + lane + 32 * e, accV[e], dt_dv); }
}
