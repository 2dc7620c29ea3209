// Generation over a paged KV cache: the step's K/V rows scattered into the cache, then attention of each token over
// its sequence's keys 0 … position (position − window + 1 … position in sliding-window layers; scores soft-capped
// to cap·tanh(s/cap) where a cap is set), read through the sequence's block table (key j at cache row
// table[j / bs]·bs + j % bs). Two forms:
//   cached_attention_forward: one warp per (token, query head), keys 32 at a time (one per lane) with an online
//     softmax, as attention_row.cuh does for contiguous keys;
//   cached_attention_split + cached_attention_combine (split-K, for decode steps and long contexts): one block per
//     (key range, kv head, token) whose warps are the kv head's query heads; each 32-key tile of K and V is read once
//     into shared memory and used by every query head of the group; each block leaves (unnormalised acc, m, l) for
//     its range, and the combine rescales them: out = Σ_s e^(m_s − M)·acc_s / Σ_s e^(m_s − M)·l_s, M = max_s m_s.
//     Given a counter per (token, kv head), the split kernel combines too (one launch, not two): the last of a
//     (token, kv head)'s blocks to finish runs the combine's arithmetic over every split in split order, so the bits
//     are the separate combine's, and sets the counter back to 0 for the next launch (a CUDA graph replays it). Only
//     the splits whose range holds keys take part (the others return at once: the grid is fixed when a graph is
//     captured, the context grows step by step).
//     Both are programmatic-dependent-launch aware (common.cuh): they trigger their dependent and wait at their start.
//   cached_attention_rope_split (a one-token decode step, one kernel for decode.cu's qk_rope_cache and the attention):
//     each block normes and rotates its query heads itself (head_norm_rope_v8, qk_rope_cache's arithmetic), the block
//     whose key range holds the new position does the kv head's k and writes its K and V rows into the cache before
//     reading its tiles (no other block reads that key), and the combining block stores q and q's rstd (last: without
//     q/k norms q is rotated in place, and every block of the kv head has read it by then). The same bits as
//     qk_rope_cache followed by the split kernel.
// Layouts: q, out [T, Hq, D]; k_cache, v_cache [blocks · bs, Hkv, D]; seqs, positions [T]; tables [rows, W] (I32).
#include "split_attention.cuh"

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
                                                    const void* v, int dt_v, const int* seqs, const int* positions,
                                                    const int* tables, int T, int bs, int W, int Hq, int Hkv, int D, float scale,
                                                    int window, float softcap)
{
    __shared__ float qs[ROWS_PER_BLOCK][MAX_D];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int t = blockIdx.x * ROWS_PER_BLOCK + warp;
    if (t >= T) return;                // whole warps leave; no block-wide barrier below
    int h = blockIdx.y, kh = h / (Hq / Hkv);
    int p = positions[t];
    const int* table = tables + (i64)seqs[t] * W;
    i64 qrow = ((i64)t * Hq + h) * D;
    for (int d = lane; d < D; d += 32) qs[warp][d] = ld(q, qrow + d, dt_q) * scale;
    __syncwarp();
    i64 kstride = (i64)Hkv * D, koff = (i64)kh * D;
    float acc[MAX_E];
#pragma unroll
    for (int e = 0; e < MAX_E; e++) acc[e] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    int lo = window > 0 ? max(0, p - window + 1) : 0;
    for (int j0 = lo; j0 <= p; j0 += 32)
    {
        int j = j0 + lane;
        float s = -INFINITY;
        if (j <= p)
        {
            s = 0.0f;
            i64 krow = paged_row(table, j, bs) * kstride + koff;
            for (int d = 0; d < D; d++) s += qs[warp][d] * ld(k, krow + d, dt_k);
            if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
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
            i64 vrow = paged_row(table, j0 + jj, bs) * kstride + koff;
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

extern "C" __global__ void __launch_bounds__(SPLIT_MAX_GROUP * 32) cached_attention_split(float* part, const void* q, int dt_q, const void* k, int dt_k,
                                                  const void* v, int dt_v, const int* seqs, const int* positions,
                                                  const int* tables, int bs, int W, int Hq, int Hkv, int D, float scale,
                                                  int window, float softcap, void* out, int dt_o, unsigned* counters)
{
    SplitRope none = {};
    pdl_trigger(); // the next GEMV may start streaming its weight
    pdl_wait();    // q and the cache's newest rows come from the kernel before
    split_attention(part, q, dt_q, k, dt_k, v, dt_v, seqs, positions, tables, bs, W, Hq, Hkv, D, scale, window, softcap, out, dt_o, counters, none,
                    blockIdx.x, gridDim.x, blockIdx.y, blockIdx.z);
}

// Grid (splits, Hkv, 1), one token, bf16 caches, D = 64 or 128, counters given (the combining block stores q).
extern "C" __global__ void __launch_bounds__(SPLIT_MAX_GROUP * 32) cached_attention_rope_split(float* part, uint4* k, uint4* v, const int* seqs,
                                                  const int* positions, const int* tables, int bs, int W, int Hq, int Hkv, int D, float scale,
                                                  int window, float softcap, void* out, int dt_o, unsigned* counters,
                                                  const uint4* qin, const uint4* kin, const uint4* vin, const uint4* qn, const uint4* kn,
                                                  float* qrstd, float* krstd, float eps, float off, const float* cos_t, const float* sin_t,
                                                  int max_pos, uint4* qout, uint4* kout, const int* cache_rows)
{
    SplitRope r = {qin, kin, vin, qn, kn, qrstd, krstd, eps, off, cos_t, sin_t, max_pos, qout, kout, k, v, cache_rows};
    pdl_trigger();
    pdl_wait();
    split_attention(part, nullptr, FT_BF16, k, FT_BF16, v, FT_BF16, seqs, positions, tables, bs, W, Hq, Hkv, D, scale, window, softcap, out, dt_o, counters, r,
                    blockIdx.x, gridDim.x, blockIdx.y, 0);
}

// Grid (T, Hq), one warp per (token, query head): the splits' partial results rescaled to the common maximum.
extern "C" __global__ void cached_attention_combine(void* out, int dt_o, const float* part, int Hq, int D, int splits)
{
    pdl_trigger(); // the next GEMV may start streaming its weight (common.cuh)
    pdl_wait();    // the partials come from the split kernel
    int t = blockIdx.x, h = blockIdx.y;
    split_combine_row(out, dt_o, part + ((i64)t * Hq + h) * splits * (D + 2), ((i64)t * Hq + h) * D, D, splits, threadIdx.x);
}
