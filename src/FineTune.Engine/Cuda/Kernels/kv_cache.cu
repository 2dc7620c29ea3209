// Generation over a slot-based KV cache: the step's K/V rows scattered into the cache, then attention of each
// token over its slot's keys 0 … position (one warp per (token, query head), keys 32 at a time with an online
// softmax, as attention_forward in attention.cu).
// Layouts: q, out [T, Hq, D]; k_cache, v_cache [slots · cap, Hkv, D]; slots, positions [T] (I32).
#include "common.cuh"

#define ROWS_PER_BLOCK 8
#define MAX_D 256
#define MAX_E (MAX_D / 32)

// dst[rows[i], :] = src[i, :].
extern "C" __global__ void scatter_rows(void* dst, int dt_d, const void* src, int dt_s, const int* rows, i64 n, int cols)
{
    GRID_STRIDE(e, n * cols)
    {
        i64 i = e / cols;
        int c = (int)(e - i * cols);
        st(dst, (i64)rows[i] * cols + c, ld(src, e, dt_s), dt_d);
    }
}

extern "C" __global__ void cached_attention_forward(void* out, int dt_o, const void* q, int dt_q, const void* k, int dt_k,
                                                    const void* v, int dt_v, const int* slots, const int* positions,
                                                    int T, int cap, int Hq, int Hkv, int D, float scale)
{
    __shared__ float qs[ROWS_PER_BLOCK][MAX_D];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int t = blockIdx.x * ROWS_PER_BLOCK + warp;
    if (t >= T) return;                // whole warps leave; no block-wide barrier below
    int h = blockIdx.y, kh = h / (Hq / Hkv);
    int p = positions[t];
    i64 qrow = ((i64)t * Hq + h) * D;
    for (int d = lane; d < D; d += 32) qs[warp][d] = ld(q, qrow + d, dt_q) * scale;
    __syncwarp();
    float acc[MAX_E];
#pragma unroll
    for (int e = 0; e < MAX_E; e++) acc[e] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    i64 kstride = (i64)Hkv * D, kbase = (i64)slots[t] * cap * kstride + (i64)kh * D;
    for (int j0 = 0; j0 <= p; j0 += 32)
    {
        int j = j0 + lane;
        float s = -INFINITY;
        if (j <= p)
        {
            s = 0.0f;
            i64 krow = kbase + j * kstride;
            for (int d = 0; d < D; d++) s += qs[warp][d] * ld(k, krow + d, dt_k);
        }
        float mn = fmaxf(m, warp_max(s));
        float corr = expf(m - mn);
        float pj = j <= p ? expf(s - mn) : 0.0f;
        l = l * corr + warp_sum(pj);
#pragma unroll
        for (int e = 0; e < MAX_E; e++) acc[e] *= corr;
        int count = min(32, p - j0 + 1);
        for (int jj = 0; jj < count; jj++)
        {
            float pjj = __shfl_sync(FULL_MASK, pj, jj);
            i64 vrow = kbase + (i64)(j0 + jj) * kstride;
#pragma unroll
            for (int e = 0; e < MAX_E; e++)
                if (lane + 32 * e < D) acc[e] += pjj * ld(v, vrow + lane + 32 * e, dt_v);
        }
        m = mn;
    }
    float inv = 1.0f / l;
#pragma unroll
    for (int e = 0; e < MAX_E; e++)
        if (lane + 32 * e < D) st(out, qrow + lane + 32 * e, acc[e] * inv, dt_o);
}
