// Generation over a slot-based KV cache: the step's K/V rows scattered into the cache, then attention of each
// token over its slot's keys 0 … position (position − window + 1 … position in sliding-window layers) (one warp per (token, query head), keys 32 at a time with an online
// softmax: attention_row.cuh, shared with attention.cu).
// Layouts: q, out [T, Hq, D]; k_cache, v_cache [slots · cap, Hkv, D]; slots, positions [T] (I32).
#include "attention_row.cuh"

#define ROWS_PER_BLOCK 8
#define MAX_D ATTENTION_MAX_D
#define MAX_E ATTENTION_MAX_E

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
                                                    int T, int cap, int Hq, int Hkv, int D, float scale, int window, float softcap)
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
    i64 kstride = (i64)Hkv * D, kbase = (i64)slots[t] * cap * kstride + (i64)kh * D;
    float acc[MAX_E], m, l;
    attention_row(qs[warp], k, dt_k, v, dt_v, kbase, kstride, window > 0 ? max(0, p - window + 1) : 0, p, D, lane, softcap, acc, m, l);
    float inv = 1.0f / l;
#pragma unroll
    for (int e = 0; e < MAX_E; e++)
        if (lane + 32 * e < D) st(out, qrow + lane + 32 * e, acc[e] * inv, dt_o);
}
