// Split-K attention of decode steps over the paged KV cache (kv_cache.cu's cached_attention_split and
// cached_attention_rope_split, and decode.cu's whole-layer decode_layer, which runs it inside a persistent grid): the
// block of one (key range, kv head, token), whose warps are the kv head's query heads, and the combine of the ranges'
// partial results. kv_cache.cu's header says what each form computes.
#pragma once
#include "attention_row.cuh"

#define SPLIT_MAX_D 128
#define SPLIT_MAX_E (SPLIT_MAX_D / 32)
#define SPLIT_MAX_GROUP 16

__device__ __forceinline__ i64 paged_row(const int* table, int j, int bs)
{
    return (i64)table[j / bs] * bs + j % bs;
}

// Row orow of out (one query head of one token) from its splits' partial results src [splits, D + 2] (acc, m, l), by
// one warp: the splits rescaled to the common maximum, in split order. L1-bypassing loads: in the one-kernel form other
// blocks of the same launch wrote them. Lane s holds split s's m, l and e^(m_s − M) (32 splits a round), and every
// split's acc values are loaded eight splits at a time before any of them is added: a loop that loaded one split's m,
// then (once m was known not to be −inf) its acc, waited on L2 twice a split (H200, 2026-12-04, a decode step's
// one-kernel attention: 0.459 → 0.433 ms a step over 28 layers of the Qwen3-1.7B shape, 32 splits;
// docs/device-results/h200-2026-12-04/run4). The sums take the same terms in the same order (the max is exact in any
// order; a split with m = −inf adds nothing), so the bits are those of the split-by-split loop.
__device__ __forceinline__ void split_combine_row(void* out, int dt_o, const float* src, i64 orow, int D, int splits, int lane)
{
    float M = -INFINITY;
    for (int s = lane; s < splits; s += 32) M = fmaxf(M, __ldcg(src + (i64)s * (D + 2) + D));
    M = warp_max(M);
    float L = 0.0f;
    float acc[SPLIT_MAX_E];
#pragma unroll
    for (int e = 0; e < SPLIT_MAX_E; e++) acc[e] = 0.0f;
    for (int s0 = 0; s0 < splits; s0 += 32)
    {
        int n = min(32, splits - s0);
        const float* round = src + (i64)s0 * (D + 2);
        float ms = lane < n ? __ldcg(round + (i64)lane * (D + 2) + D) : -INFINITY;
        float ls = lane < n ? __ldcg(round + (i64)lane * (D + 2) + D + 1) : 0.0f;
        float fs = ms == -INFINITY ? 0.0f : expf(ms - M);
        for (int j0 = 0; j0 < n; j0 += 8)
        {
            float vals[8][SPLIT_MAX_E];
#pragma unroll
            for (int jj = 0; jj < 8; jj++)
#pragma unroll
                for (int e = 0; e < SPLIT_MAX_E; e++)
                    vals[jj][e] = j0 + jj < n && lane + 32 * e < D ? __ldcg(round + (i64)(j0 + jj) * (D + 2) + lane + 32 * e) : 0.0f;
#pragma unroll
            for (int jj = 0; jj < 8; jj++)
            {
                float mj = __shfl_sync(FULL_MASK, ms, j0 + jj), f = __shfl_sync(FULL_MASK, fs, j0 + jj), lj = __shfl_sync(FULL_MASK, ls, j0 + jj);
                if (j0 + jj >= n || mj == -INFINITY) continue; // past the round, or an empty range
                L += f * lj;
#pragma unroll
                for (int e = 0; e < SPLIT_MAX_E; e++)
                    if (lane + 32 * e < D) acc[e] += f * vals[jj][e];
            }
        }
    }
    float inv = 1.0f / L;
#pragma unroll
    for (int e = 0; e < SPLIT_MAX_E; e++)
        if (lane + 32 * e < D) st(out, orow + lane + 32 * e, acc[e] * inv, dt_o);
}

// The K and V rows split_attention(…, split, splits, kh, t) will read (its first tile's: up to 32 keys) into L2, by
// every thread of the block, one 128-byte line each (prefetch_l2's hint: no value changes). decode.cu's decode_layer
// issues it before the grid barrier its attention stage waits at, so the cache rows come from DRAM meanwhile.
__device__ __forceinline__ void split_prefetch(const void* k, const void* v, const int* seqs, const int* positions, const int* tables, int bs, int W,
                                               int Hkv, int D, int window, int split, int splits, int kh, int t)
{
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    int p = positions[t], len = p + 1;
    const int* table = tables + (i64)seqs[t] * W;
    int lo = window > 0 ? max(0, p - window + 1) : 0;
    int chunk = ((len - lo + splits - 1) / splits + 31) / 32 * 32;
    int start = lo + split * chunk, end = min(min(len, start + chunk), start + 32);
    int lines = (D * 2 + PREFETCH_LINE - 1) / PREFETCH_LINE; // a key row's lines (bf16)
    for (int i = threadIdx.x; i < (end - start) * lines * 2; i += blockDim.x)
    {
        int j = start + i / (2 * lines), r = i % (2 * lines);
        i64 row = (paged_row(table, j, bs) * Hkv + kh) * D;
        const unsigned short* base = (const unsigned short*)(r < lines ? k : v) + row;
        asm volatile("prefetch.global.L2 [%0];" :: "l"((const char*)base + (r % lines) * PREFETCH_LINE));
    }
#endif
}

// Grid (splits, Hkv, T), block max(G, 4)·32 threads (G = Hq / Hkv ≤ SPLIT_MAX_GROUP, D ≤ SPLIT_MAX_D): warp w < G
// computes query head kh·G + w, and every warp helps copy the key tiles (at G = 2, two warps alone left the copies
// latency-bound: 46 µs a layer for 100 keys on an H200). Split s of token t covers keys [s·chunk, min(p + 1,
// (s + 1)·chunk)), chunk = the key count / splits rounded up to 32, so a graph captured for one step stays right for
// any positions. part: [T, Hq, splits, D + 2] F32 (acc, m, l). counters: null (cached_attention_combine follows), or
// [T, Hkv] zeros, and the last block of each (t, kh) writes out [T, Hq, D] itself. The block computes range `split`
// of `splits` for kv head kh of token t: the kernels' own grid coordinates (each waits for the kernel before first:
// pdl_wait), or a work item of decode.cu's persistent decode_layer. Called by every thread of the block.
#define SPLIT_THREADS_MIN 128

// The rope-and-attention form's own inputs and outputs (qin null: the split kernel, q given already rotated). Layouts
// as qk_rope_cache's (bf16, 16-byte chunks): qin, qout [T, Hq·D/8]; kin, kout, vin [T, Hkv·D/8]; kcache, vcache the
// caches k and v; qrstd [T, Hq], krstd [T, Hkv] (written only with norms).
struct SplitRope
{
    const uint4 *qin, *kin, *vin, *qn, *kn;
    float *qrstd, *krstd;
    float eps, off;
    const float *cos_t, *sin_t;
    int max_pos;
    uint4 *qout, *kout, *kcache, *vcache;
    const int* cache_rows;
};

__device__ __forceinline__ void split_attention(float* part, const void* q, int dt_q, const void* k, int dt_k,
                                                const void* v, int dt_v, const int* seqs, const int* positions,
                                                const int* tables, int bs, int W, int Hq, int Hkv, int D, float scale,
                                                int window, float softcap, void* out, int dt_o, unsigned* counters, const SplitRope& r,
                                                int split, int splits, int kh, int t)
{
    __shared__ float ks[32][SPLIT_MAX_D + 1]; // +1: lanes read different keys of one column without bank conflicts
    __shared__ float vs[32][SPLIT_MAX_D];
    __shared__ float qs[SPLIT_MAX_GROUP][SPLIT_MAX_D];
    int G = Hq / Hkv, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    bool computes = warp < G;
    int h = kh * G + (computes ? warp : 0);
    int p = positions[t], len = p + 1;
    const int* table = tables + (i64)seqs[t] * W;
    int lo = window > 0 ? max(0, p - window + 1) : 0; // a sliding-window layer reads keys lo … p
    int chunk = ((len - lo + splits - 1) / splits + 31) / 32 * 32;
    int start = lo + split * chunk, end = min(len, start + chunk);
    // With counters (one launch), a range past the keys (a short context: at ~100 keys 4 of 32 ranges hold any)
    // neither writes partials nor counts: the combine counts and reads the `active` ranges that hold keys — the empty
    // ones it skipped anyway (m = −inf), so the bits are those of every range counted.
    int active = (len - lo + chunk - 1) / chunk;
    if (counters != nullptr && start >= end) return;
    i64 qrow = ((i64)t * Hq + h) * D;
    const bool rope = r.qin != nullptr;
    i64 kstride = (i64)Hkv * D, koff = (i64)kh * D;
    // BF16 caches with D % 8 == 0 copy 16 bytes (8 values) per load, all of a thread's loads issued before any store.
    const bool vec = dt_k == FT_BF16 && dt_v == FT_BF16 && (D & 7) == 0;
    const int cpr = D >> 3; // 16-byte chunks per key row
    // 32 keys × cpr chunks ≤ 512 = SPLIT_THREADS_MIN × 4 copies per thread.
    constexpr int U = 32 * (SPLIT_MAX_D / 8) / SPLIT_THREADS_MIN;
    uint4 kr[U], vr[U];
    // Tile j0's K and V chunks into kr/vr: every key but skip, or (only ≥ 0) key only alone. Key p, which the rope
    // form writes in this launch, is loaded after the barrier that follows its write.
    auto load_tile = [&](int j0, int skip, int only)
    {
#pragma unroll
        for (int u = 0; u < U; u++)
        {
            int idx = threadIdx.x + u * blockDim.x, jj = idx / cpr, j = j0 + jj;
            if (idx < 32 * cpr && j < end && j != skip && (only < 0 || j == only))
            {
                i64 row = paged_row(table, j, bs) * kstride + koff + (idx - jj * cpr) * 8;
                kr[u] = *(const uint4*)((const unsigned short*)k + row);
                vr[u] = *(const uint4*)((const unsigned short*)v + row);
            }
        }
    };
    // The first tile's keys (all written by earlier steps but p) go out before the rope work that q waits on.
    const int late = rope ? p : -1;
    if (vec) load_tile(start, late, -1);
    uint4 qrot = make_uint4(0u, 0u, 0u, 0u); // rope: this lane's chunk of its q head, rotated and rounded
    float qinv = 0.0f;
    if (rope)
    {
        int c8 = D >> 3;
        float x[8], xr[8];
        if (computes)
        {
            head_norm_rope_v8(x, r.qin + (i64)t * Hq * c8 + (i64)h * c8 + lane, r.qn, r.eps, r.off, D, lane, &qinv, p, r.cos_t, r.sin_t, r.max_pos);
            if (lane < c8)
            {
                qrot = pack8(x);
                unpack8(qrot, xr); // q as qk_rope_cache stores it and the split kernel reads it
#pragma unroll
                for (int j = 0; j < 8; j++) qs[warp][lane * 8 + j] = xr[j] * scale;
            }
        }
        if (warp == 0 && start < end && end == len) // this block's range holds the new key p
        {
            i64 at = (i64)t * Hkv * c8 + (i64)kh * c8 + lane;
            float kinv;
            head_norm_rope_v8(x, r.kin + at, r.kn, r.eps, r.off, D, lane, &kinv, p, r.cos_t, r.sin_t, r.max_pos);
            if (r.kn != nullptr && lane == 0) r.krstd[(i64)t * Hkv + kh] = kinv;
            if (lane < c8)
            {
                uint4 kr = pack8(x);
                r.kout[at] = kr;
                i64 row = (i64)r.cache_rows[t] * Hkv * c8 + (i64)kh * c8 + lane;
                r.kcache[row] = kr;
                r.vcache[row] = r.vin[at];
            }
        }
        // The loop's first barrier makes the K/V rows (global) and qs visible to the whole block.
    }
    else if (computes)
        for (int d = lane; d < D; d += 32) qs[warp][d] = ld(q, qrow + d, dt_q) * scale;
    float acc[SPLIT_MAX_E];
#pragma unroll
    for (int e = 0; e < SPLIT_MAX_E; e++) acc[e] = 0.0f;
    float m = -INFINITY, l = 0.0f;
    for (int j0 = start; j0 < end; j0 += 32)
    {
        __syncthreads(); // the previous tile is used up (and qs written, on the first pass)
        if (vec)
        {
            if (j0 != start) load_tile(j0, -1, -1);
            else if (late >= start && late < end) load_tile(j0, -1, late); // the rest came before the rope work
#pragma unroll
            for (int u = 0; u < U; u++)
            {
                int idx = threadIdx.x + u * blockDim.x, jj = idx / cpr, j = j0 + jj;
                if (idx < 32 * cpr && j < end)
                {
                    int d0 = (idx - jj * cpr) * 8;
                    float kf[8], vf[8];
                    unpack8(kr[u], kf);
                    unpack8(vr[u], vf);
#pragma unroll
                    for (int i = 0; i < 8; i++) { ks[jj][d0 + i] = kf[i]; vs[jj][d0 + i] = vf[i]; }
                }
            }
        }
        else
            for (int idx = threadIdx.x; idx < 32 * D; idx += blockDim.x)
            {
                int jj = idx / D, d = idx - jj * D, j = j0 + jj;
                if (j < end)
                {
                    i64 row = paged_row(table, j, bs) * kstride + koff + d;
                    ks[jj][d] = ld(k, row, dt_k);
                    vs[jj][d] = ld(v, row, dt_v);
                }
            }
        __syncthreads();
        if (!computes) continue;
        int j = j0 + lane;
        float s = -INFINITY;
        if (j < end)
        {
            s = 0.0f;
            for (int d = 0; d < D; d++) s += qs[warp][d] * ks[lane][d];
            if (softcap > 0.0f) s = softcap * tanhf(s / softcap);
        }
        float mn = fmaxf(m, warp_max(s));
        // A range whose first tile is empty keeps m = −inf; exp(−inf − (−inf)) would be NaN.
        float corr = m == -INFINITY ? 0.0f : expf(m - mn);
        float pj = j < end ? expf(s - mn) : 0.0f;
        l = l * corr + warp_sum(pj);
#pragma unroll
        for (int e = 0; e < SPLIT_MAX_E; e++) acc[e] *= corr;
        int count = min(32, end - j0);
        for (int jj = 0; jj < count; jj++)
        {
            float pjj = __shfl_sync(FULL_MASK, pj, jj);
#pragma unroll
            for (int e = 0; e < SPLIT_MAX_E; e++)
                if (lane + 32 * e < D) acc[e] += pjj * vs[jj][lane + 32 * e];
        }
        m = mn;
    }
    if (computes)
    {
        float* dst = part + (((i64)t * Hq + h) * splits + split) * (D + 2);
#pragma unroll
        for (int e = 0; e < SPLIT_MAX_E; e++)
            if (lane + 32 * e < D) dst[lane + 32 * e] = acc[e];
        if (lane == 0) { dst[D] = m; dst[D + 1] = l; }
    }
    if (counters == nullptr) return;
    __shared__ bool last;
    __threadfence(); // this block's partials reach L2 before its count does
    __syncthreads();
    if (threadIdx.x == 0)
    {
        unsigned* count = counters + (i64)t * Hkv + kh;
        last = atomicAdd(count, 1u) == (unsigned)active - 1;
        if (last) *count = 0u; // every other block of (t, kh) has counted
    }
    __syncthreads();
    if (!last || !computes) return;
    __threadfence();
    split_combine_row(out, dt_o, part + ((i64)t * Hq + h) * splits * (D + 2), ((i64)t * Hq + h) * D, D, active, lane);
    if (rope)
    {
        int c8 = D >> 3;
        if (lane < c8) r.qout[(i64)t * Hq * c8 + (i64)h * c8 + lane] = qrot;
        if (r.qn != nullptr && lane == 0) r.qrstd[(i64)t * Hq + h] = qinv;
    }
}
