// The forward of one attention row, shared by training attention (attention.cu) and generation over the KV cache
// (kv_cache.cu): one warp computes softmax(q·kᵀ)·v for its query over keys start … p, 32 keys at a time (one per
// lane) with an online softmax, so no score row reaches device memory.
#pragma once
#include "common.cuh"

#define ATTENTION_MAX_D 256
#define ATTENTION_MAX_E (ATTENTION_MAX_D / 32)

// qs: the query row, already multiplied by the softmax scale (shared memory of this warp). Key j's row starts at
// kbase + j·kstride in k and v. cap > 0 soft-caps each score s to cap·tanh(s/cap) (gemma 2) before the softmax. Leaves acc (lane's output columns lane + 32·e, unnormalised), the running max m and
// the running sum l; the output is acc / l, the log-sum-exp m + log(l).
__device__ __forceinline__ void attention_row(const float* qs, const void* k, int dt_k, const void* v, int dt_v,
                                              i64 kbase, i64 kstride, int start, int p, int D, int lane, float cap,
                                              float (&acc)[ATTENTION_MAX_E], float& m, float& l)
{
#pragma unroll
    for (int e = 0; e < ATTENTION_MAX_E; e++) acc[e] = 0.0f;
    m = -INFINITY;
    l = 0.0f;
    for (int j0 = start; j0 <= p; j0 += 32)
    {
        int j = j0 + lane;
        float s = -INFINITY;
        if (j <= p)
        {
            s = 0.0f;
            i64 krow = kbase + j * kstride;
            for (int d = 0; d < D; d++) s += qs[d] * ld(k, krow + d, dt_k);
            if (cap > 0.0f) s = cap * tanhf(s / cap);
        }
        float mn = fmaxf(m, warp_max(s));
        float corr = expf(m - mn);
        float pj = j <= p ? expf(s - mn) : 0.0f;
        l = l * corr + warp_sum(pj);
#pragma unroll
        for (int e = 0; e < ATTENTION_MAX_E; e++) acc[e] *= corr;
        int count = min(32, p - j0 + 1);
        for (int jj = 0; jj < count; jj++)
        {
            float pjj = __shfl_sync(FULL_MASK, pj, jj);
            i64 vrow = kbase + (i64)(j0 + jj) * kstride;
#pragma unroll
            for (int e = 0; e < ATTENTION_MAX_E; e++)
                if (lane + 32 * e < D) acc[e] += pjj * ld(v, vrow + lane + 32 * e, dt_v);
        }
        m = mn;
    }
}
