// Flash attention on tensor cores (mma.sync m16n8k16, bf16 operands, fp32 accumulators), forward and backward,
// for BF16 q/k/v and head_dim 64, 128 or 256. Causal, grouped-query, segment-masked, and optionally windowed and
// soft-capped (gemma 2/3) exactly like attention.cu, whose simple kernels remain the reference and the fallback
// (F32 tensors, other head sizes).
// Scores live only in registers: S = QKᵀ for a 16-row slice per warp and a tile of keys, an online softmax
// (FlashAttention-2), then P·V with P re-packed from the accumulator layout straight into an A operand.
// Backward without atomics (bit-reproducible): one kernel walks key tiles per query slice for dQ, another walks
// query tiles per key slice for dK and dV (F32 partials per query head, summed over the KV group by a third),
// both recomputing P from the saved lse. Every streamed tile arrives by cp.async; the backward kernels
// double-buffer theirs. Tile shapes are template parameters; the instantiated ones are listed after each kernel.
//
// Sliding windows and soft-caps (attention.cu's semantics): key j is visible from key position p when j <= p, same
// segment, and p − j < window (window > 0); with cap > 0 the scaled score s = scale·q·k becomes cap·tanh(s/cap)
// before the softmax (lse is taken over the capped scores) and the backward multiplies dS by ∂c/∂s = 1 − tanh².
// Each kernel is instantiated twice: VARIANT = false is plain causal attention, whose instructions ignore window and
// cap (the code of the plain kernels before windows existed, so plain layers keep their bits and their speed);
// VARIANT = true (kernel names ending in `_var`) tests the window and applies the cap at run time.
//
// head_dim 256 (gemma3-12b, gemma2-9b) does not fit the D ≤ 128 register plan (Q fragments D/16×4 and the output
// accumulator D/8×4 per lane = 64 + 128 registers before S): there Q (and dO in the dQ kernel) are read from shared
// memory at each k-step instead of being held in registers, the backward walks tiles of 32, and the dK/dV kernel
// splits the accumulated head dims across blocks (see flash_backward_dkv).
//
// The mma/ldmatrix/cp.async helpers and the fragment layouts they follow are in mma.cuh (shared with experts.cu).
#include "mma.cuh"

#define LOG2E 1.4426950408889634f
#define LN2 0.6931471805599453f

__device__ __forceinline__ unsigned ld32(const bf16_t* p) { return *(const unsigned*)p; }

// Accumulators of two adjacent n-tiles (16 columns) as the A operand of the next product.
__device__ __forceinline__ void acc_to_a(unsigned* a, const float* c0, const float* c1)
{
    a[0] = pack_bf16(c0[0], c0[1]);
    a[1] = pack_bf16(c0[2], c0[3]);
    a[2] = pack_bf16(c1[0], c1[1]);
    a[3] = pack_bf16(c1[2], c1[3]);
}

// ---------------------------------------------------------------------------------------------------------
// Tile movement shared by every kernel: cp.async copies global → shared (16 bytes per copy for bf16 rows, 4 for
// per-row floats and segment ids), zero-filled past the end, so a partial tile needs no second code path.
// The streamed operand of each kernel (K/V in the forward and dQ, Q/dO/lse/delta in dK/dV) goes through
// STAGES shared-memory buffers: with 2, tile n+1 is in flight while tile n is multiplied.
// ---------------------------------------------------------------------------------------------------------
__device__ __forceinline__ void cp_async4(void* dst, const void* src, bool valid)
{
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4, %2;" :: "r"(smem_addr(dst)), "l"(src), "r"(valid ? 4 : 0));
}

// Rows [r0, r0+ROWS) of a [rows, heads, D] bf16 tensor (head h, rows counted from row_base) into a row-major
// shared tile with row stride D+8 (the pad keeps ldmatrix conflict-free); rows at or past `limit` become zeros.
template <int D, int ROWS, int THREADS>
__device__ __forceinline__ void cp_tile(bf16_t* tile, const bf16_t* src, i64 row_base, int r0, int limit, int heads, int h)
{
    constexpr int CHUNKS = D / 8, N = ROWS * CHUNKS;
    for (int idx = threadIdx.x; idx < N; idx += THREADS)
    {
        int rr = idx / CHUNKS, c8 = (idx % CHUNKS) * 8, r = r0 + rr;
        bool ok = r < limit;
        cp_async16(tile + rr * (D + 8) + c8, ok ? src + ((row_base + r) * heads + h) * D + c8 : src, ok);
    }
}

// ROWS consecutive 32-bit values src[r0 ..] (lse, delta, segment ids) into shared memory; past `limit` zeros.
template <int ROWS, int THREADS>
__device__ __forceinline__ void cp_row32(void* dst, const void* src, int r0, int limit)
{
    for (int i = threadIdx.x; i < ROWS; i += THREADS)
    {
        bool ok = r0 + i < limit;
        cp_async4((unsigned*)dst + i, ok ? (const unsigned*)src + r0 + i : (const unsigned*)src, ok);
    }
}

// cp_tile's copies with their per-thread arithmetic done once: with THREADS a multiple of D/8, every thread copies the
// same 16-byte column `c8` of rows rr0, rr0 + STEP, … of each tile, so a tile costs each thread one 64-bit address,
// then per copy an add, a compare and the cp.async. Used by the forward (its K and V tiles, every key tile).
template <int D, int ROWS, int THREADS>
struct TileCopy
{
    static constexpr int CHUNKS = D / 8, STEP = THREADS / CHUNKS, PER = ROWS / STEP;
    static_assert(THREADS % CHUNKS == 0 && ROWS % STEP == 0, "threads must tile the rows evenly");
    const bf16_t* base;   // the tensor at (row 0 of row_base, head h, column c8)
    i64 row_stride;       // elements between consecutive rows (heads·D)
    unsigned dst0;        // shared address of this thread's first chunk in stage 0
    int rr0;

    __device__ __forceinline__ TileCopy(const bf16_t* src, i64 row_base, int heads, int h, unsigned tile_addr)
    {
        int c8 = (threadIdx.x % CHUNKS) * 8;
        rr0 = threadIdx.x / CHUNKS;
        row_stride = (i64)heads * D;
        base = src + (row_base * heads + h) * D + c8;
        dst0 = tile_addr + (unsigned)(rr0 * (D + 8) + c8) * 2;
    }

    // Rows [r0, r0 + ROWS) into the tile at byte offset `stage_off` from stage 0; rows at or past `limit` become zeros.
    __device__ __forceinline__ void copy(unsigned stage_off, int r0, int limit, const bf16_t* fallback) const
    {
        const bf16_t* src = base + (i64)(r0 + rr0) * row_stride;
#pragma unroll
        for (int i = 0; i < PER; i++)
        {
            bool ok = r0 + rr0 + i * STEP < limit;
            cp_async16_at(dst0 + stage_off + (unsigned)(i * STEP * (D + 8) * 2), ok ? src + i * STEP * row_stride : fallback, ok);
        }
    }
};

// A fragments (k = 0..D) of one warp's 16 rows read straight from global memory: rows `lo` and `lo + 8` of the
// fragment layout; a null row (past the end) gives zeros.
template <int D>
__device__ __forceinline__ void ld_rows_a(unsigned (*a)[4], const bf16_t* lo, const bf16_t* hi, int t)
{
#pragma unroll
    for (int kk = 0; kk < D / 16; kk++)
    {
        int c0 = kk * 16 + 2 * t, c1 = c0 + 8;
        a[kk][0] = lo ? ld32(lo + c0) : 0u;
        a[kk][1] = hi ? ld32(hi + c0) : 0u;
        a[kk][2] = lo ? ld32(lo + c1) : 0u;
        a[kk][3] = hi ? ld32(hi + c1) : 0u;
    }
}

// Accumulator rows `lo` and `lo + 8` (D columns) times f_lo / f_hi, rounded to bf16; a null row is skipped.
template <int D>
__device__ __forceinline__ void st_rows_bf16(bf16_t* lo, bf16_t* hi, const float (*c)[4], float f_lo, float f_hi, int t)
{
#pragma unroll
    for (int d = 0; d < D / 8; d++)
    {
        if (lo) *(unsigned*)(lo + d * 8 + 2 * t) = pack_bf16(c[d][0] * f_lo, c[d][1] * f_lo);
        if (hi) *(unsigned*)(hi + d * 8 + 2 * t) = pack_bf16(c[d][2] * f_hi, c[d][3] * f_hi);
    }
}

template <int N>
__device__ __forceinline__ void zero_acc(float (*c)[4])
{
#pragma unroll
    for (int i = 0; i < N; i++) c[i][0] = c[i][1] = c[i][2] = c[i][3] = 0.0f;
}

// Window and soft-cap of the VARIANT kernels. `win` is the window, or 2^30 (no window) so `p − j < win` always holds.
struct ScoreVariant
{
    int win;
    float cap;        // > 0: soft-capped
    float cap_l2;     // cap·log2(e)
    float scale_cap;  // scale / cap
};

__device__ __forceinline__ ScoreVariant score_variant(int window, float cap, float scale)
{
    ScoreVariant v;
    v.win = window > 0 ? window : (1 << 30);
    v.cap = cap;
    v.cap_l2 = cap * LOG2E;
    v.scale_cap = cap > 0.0f ? scale / cap : 0.0f;
    return v;
}

// The softmax logit in log2 units of a raw product r = q·k: r·scale·log2(e), or soft-capped
// cap·tanh(r·scale/cap)·log2(e); dcap ← ∂(capped)/∂(scaled) = 1 − tanh² (1 without a cap).
__device__ __forceinline__ float variant_logit2(const ScoreVariant& v, float raw, float sl2, float& dcap)
{
    if (v.cap > 0.0f)
    {
        float th = tanhf(raw * v.scale_cap);
        dcap = 1.0f - th * th;
        return v.cap_l2 * th;
    }
    dcap = 1.0f;
    return raw * sl2;
}

// ---------------------------------------------------------------------------------------------------------
// Forward. Block: WARPS warps × 16 query rows = BM rows of one (batch, head); key tiles of 64. The last row blocks
// (most keys under the causal mask) are scheduled first. With a window the key loop starts at the first tile the
// block's first row can reach. A key tile wholly visible from every row of the block (below the diagonal, inside the
// block's segment, and with a window inside every row's reach) skips the per-element mask; its scores are the same
// bits as the masked path's. STAGES:
//   1: the tile's K, V and segment ids copied, waited for, then multiplied (every copy of a tile in flight at once;
//      the latency is hidden only by the other blocks on the multiprocessor);
//   2: double-buffered with separate waits for K and V: tile n+1's copies are issued as soon as tile n's K has
//      arrived, S = Q·Kᵀ and the softmax run while V is still in flight, and P·V waits only for V.
// Each row's arithmetic is the same in every shape (the same key tiles in the same order, the same rounding
// points): all shapes give the same bits. Dynamic shared memory: STAGES × (K, V tiles [64][D+8] + 64 segment ids),
// and for head_dim 256 the block's Q tile [BM][D+8] (Q_SMEM: fragments read per k-step, which leaves the registers
// to the 128-float output accumulator). FlashForwardTiles (C#) names the instantiated shapes.
// ---------------------------------------------------------------------------------------------------------
#define FWD_BN 64

template <int D, int WARPS, int STAGES, bool VARIANT>
__device__ void flash_forward(bf16_t* out, float* lse, const bf16_t* q, const bf16_t* k, const bf16_t* v, const int* seg_ids,
                              int QL, int KL, int kv_cap, int Hq, int Hkv, float scale, int window, float cap)
{
    extern __shared__ __align__(16) unsigned char smem[];
    constexpr int SD = D + 8, BM = 16 * WARPS, THREADS = 32 * WARPS;
    constexpr bool Q_SMEM = D > 128;
    static_assert(STAGES == 1 || STAGES == 2, "one or two stages");
    bf16_t* KsBase = (bf16_t*)smem;                          // [STAGES][FWD_BN][SD]
    bf16_t* VsBase = KsBase + STAGES * FWD_BN * SD;          // [STAGES][FWD_BN][SD]
    int* segkBase = (int*)(VsBase + STAGES * FWD_BN * SD);   // [STAGES][FWD_BN]
    bf16_t* Qs = (bf16_t*)(segkBase + STAGES * FWD_BN);      // [BM][SD], Q_SMEM only
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, b = blockIdx.z, kh = h / (Hq / Hkv);
    const int off = KL - QL;
    const int row0 = (gridDim.x - 1 - blockIdx.x) * BM;
    const int r_lo = row0 + warp * 16 + g, r_hi = r_lo + 8;
    const int* seg = seg_ids + (i64)b * kv_cap;
    const int p_lo = off + r_lo, p_hi = off + r_hi;
    const int sid_lo = r_lo < QL ? seg[p_lo] : -3, sid_hi = r_hi < QL ? seg[p_hi] : -3;
    const float sl2 = scale * LOG2E;
    const int last_row = min(QL - 1, row0 + BM - 1);
    const int p_first = off + row0, p_last = off + last_row, sid_last = seg[p_last];
    int first_key = segment_start(seg, p_first);
    if (VARIANT && window > 0) first_key = max(first_key, p_first - window + 1);
    const int start = first_key & ~(FWD_BN - 1);
    const i64 kv_row_base = (i64)b * kv_cap;
    // Shared addresses kept in registers: this lane's ldmatrix row in the K, V (stage 0) and Q tiles.
    constexpr unsigned STAGE_BYTES = FWD_BN * SD * 2;
    const unsigned k_lane = smem_addr(KsBase) + lane_off_b_nk(SD, lane) * 2, v_lane = smem_addr(VsBase) + lane_off_a(SD, lane) * 2;
    const unsigned q_lane = smem_addr(Qs) + (warp * 16 * SD + lane_off_a(SD, lane)) * 2;
    const TileCopy<D, FWD_BN, THREADS> kcopy(k, kv_row_base, Hkv, kh, smem_addr(KsBase)), vcopy(v, kv_row_base, Hkv, kh, smem_addr(VsBase));
    // Keys past KL are zero-filled with segment id 0; the causal test (j <= p, p < KL) masks them.
    auto issue_k = [&](int stage, int j)
    {
        kcopy.copy(stage * STAGE_BYTES, j, KL, k);
        cp_row32<FWD_BN, THREADS>(segkBase + stage * FWD_BN, seg, j, KL);
    };
    auto issue_v = [&](int stage, int j) { vcopy.copy(stage * STAGE_BYTES, j, KL, v); };
    // Q's copy joins the first group (STAGES 2: the first K wait covers it; STAGES 1: the first tile's).
    if constexpr (Q_SMEM) cp_tile<D, BM, THREADS>(Qs, q, (i64)b * QL, row0, QL, Hq, h);
    if constexpr (STAGES == 2)
    {
        issue_k(0, start);
        cp_async_commit();
        issue_v(0, start);
        cp_async_commit();
    }

    unsigned qa[Q_SMEM ? 1 : D / 16][4];
    if constexpr (!Q_SMEM)
        ld_rows_a<D>(qa, r_lo < QL ? q + (((i64)b * QL + r_lo) * Hq + h) * D : nullptr,
                     r_hi < QL ? q + (((i64)b * QL + r_hi) * Hq + h) * D : nullptr, t);
    float o[D / 8][4];
    zero_acc<D / 8>(o);
    float m_lo = -INFINITY, m_hi = -INFINITY, l_lo = 0.0f, l_hi = 0.0f;
    const ScoreVariant var = score_variant(window, cap, scale);

    int it = 0;
    for (int j0 = start; j0 <= p_last; j0 += FWD_BN, it++)
    {
        const int cur = STAGES == 2 ? (it & 1) : 0;
        if constexpr (STAGES == 2)
        {
            cp_async_wait<1>(); // this tile's K (and everything before it); its V may still be in flight
            __syncthreads();    // ... for every thread, and every warp is done with the other stage (tile n−1)
            const bool more = j0 + FWD_BN <= p_last;
            if (more) issue_k(cur ^ 1, j0 + FWD_BN);
            cp_async_commit();
            if (more) issue_v(cur ^ 1, j0 + FWD_BN);
            cp_async_commit();
        }
        else
        {
            issue_k(0, j0);
            issue_v(0, j0);
            cp_async_commit();
            cp_async_wait<0>();
            __syncthreads();
        }
        const unsigned ks = k_lane + cur * STAGE_BYTES, vs = v_lane + cur * STAGE_BYTES;
        const int* segk = segkBase + cur * FWD_BN;

        float s[FWD_BN / 8][4];
        zero_acc<FWD_BN / 8>(s);
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
        {
            unsigned qf[4];
            if constexpr (Q_SMEM) ldsm_x4_at(qf, q_lane + kk * 16 * 2);
            else
            {
#pragma unroll
                for (int r = 0; r < 4; r++) qf[r] = qa[kk][r];
            }
#pragma unroll
            for (int np = 0; np < FWD_BN / 16; np++)
            {
                unsigned bb[4];
                ldsm_x4_at(bb, ks + (np * 16 * SD + kk * 16) * 2);
                mma16816(s[2 * np], qf, bb[0], bb[1]);
                mma16816(s[2 * np + 1], qf, bb[2], bb[3]);
            }
        }
        // Whole tile visible from every row: segments are contiguous runs, so seg[j0] == seg[last row] puts every
        // key of the tile and every row of the block in one segment.
        bool whole = j0 + FWD_BN - 1 <= p_first && segk[0] == sid_last;
        if constexpr (VARIANT) whole = whole && p_last - j0 < var.win;
        // Plain layers keep the raw products q·k here (masked ones −inf) and fold the scale into the exponent's FMA;
        // the VARIANT kernels hold the (capped) logits in log2 units.
        float mx_lo = -INFINITY, mx_hi = -INFINITY;
        if (whole)
        {
#pragma unroll
            for (int nt = 0; nt < FWD_BN / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                {
                    float val = s[nt][e];
                    if constexpr (VARIANT)
                    {
                        float dcap;
                        val = variant_logit2(var, val, sl2, dcap);
                        s[nt][e] = val;
                    }
                    if (e < 2) mx_lo = fmaxf(mx_lo, val); else mx_hi = fmaxf(mx_hi, val);
                }
        }
        else
        {
#pragma unroll
            for (int nt = 0; nt < FWD_BN / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                {
                    int col = nt * 8 + 2 * t + (e & 1), j = j0 + col;
                    bool lo = e < 2;
                    float val;
                    if constexpr (VARIANT)
                    {
                        int p = lo ? p_lo : p_hi;
                        bool ok = j <= p && p - j < var.win && segk[col] == (lo ? sid_lo : sid_hi);
                        float dcap;
                        float x = variant_logit2(var, s[nt][e], sl2, dcap);
                        val = ok ? x : -INFINITY;
                    }
                    else
                    {
                        bool ok = lo ? (j <= p_lo && segk[col] == sid_lo) : (j <= p_hi && segk[col] == sid_hi);
                        val = ok ? s[nt][e] : -INFINITY;
                    }
                    s[nt][e] = val;
                    if (lo) mx_lo = fmaxf(mx_lo, val); else mx_hi = fmaxf(mx_hi, val);
                }
        }
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(FULL_MASK, mx_lo, 1));
        mx_lo = fmaxf(mx_lo, __shfl_xor_sync(FULL_MASK, mx_lo, 2));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(FULL_MASK, mx_hi, 1));
        mx_hi = fmaxf(mx_hi, __shfl_xor_sync(FULL_MASK, mx_hi, 2));
        // The scale is positive, so scaling the raw maximum gives the maximum of the scaled scores.
        if constexpr (!VARIANT) { mx_lo *= sl2; mx_hi *= sl2; }
        float mn_lo = fmaxf(m_lo, mx_lo), mn_hi = fmaxf(m_hi, mx_hi);
        float ref_lo = mn_lo == -INFINITY ? 0.0f : mn_lo, ref_hi = mn_hi == -INFINITY ? 0.0f : mn_hi;
        float c_lo = exp2_ftz(m_lo - ref_lo), c_hi = exp2_ftz(m_hi - ref_hi);
        float sum_lo = 0.0f, sum_hi = 0.0f;
        // exp2(scale·log2e·s − ref) as one FMA and one MUFU per score (plain), or exp2(logit − ref) (VARIANT).
        const float mul = VARIANT ? 1.0f : sl2;
#pragma unroll
        for (int nt = 0; nt < FWD_BN / 8; nt++)
        {
            s[nt][0] = exp2_ftz(fmaf(s[nt][0], mul, -ref_lo)); s[nt][1] = exp2_ftz(fmaf(s[nt][1], mul, -ref_lo));
            s[nt][2] = exp2_ftz(fmaf(s[nt][2], mul, -ref_hi)); s[nt][3] = exp2_ftz(fmaf(s[nt][3], mul, -ref_hi));
            sum_lo += s[nt][0] + s[nt][1];
            sum_hi += s[nt][2] + s[nt][3];
        }
        l_lo = l_lo * c_lo + sum_lo;
        l_hi = l_hi * c_hi + sum_hi;
        m_lo = mn_lo; m_hi = mn_hi;
        // Once the row maxima stop growing every factor is exactly 1: the warp skips the multiplications (same bits).
        if (__any_sync(FULL_MASK, c_lo != 1.0f || c_hi != 1.0f))
        {
#pragma unroll
            for (int d = 0; d < D / 8; d++) { o[d][0] *= c_lo; o[d][1] *= c_lo; o[d][2] *= c_hi; o[d][3] *= c_hi; }
        }
        if constexpr (STAGES == 2)
        {
            cp_async_wait<2>(); // this tile's V (tile n+1's K and V may still be in flight)
            __syncthreads();
        }
#pragma unroll
        for (int kk = 0; kk < FWD_BN / 16; kk++)
        {
            unsigned pa[4];
            acc_to_a(pa, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int dp = 0; dp < D / 16; dp++)
            {
                unsigned bb[4];
                ldsm_x4_trans_at(bb, vs + (kk * 16 * SD + dp * 16) * 2);
                mma16816(o[2 * dp], pa, bb[0], bb[1]);
                mma16816(o[2 * dp + 1], pa, bb[2], bb[3]);
            }
        }
        if constexpr (STAGES == 1) __syncthreads(); // every warp is done with the stage before it is refilled
    }
    l_lo += __shfl_xor_sync(FULL_MASK, l_lo, 1);
    l_lo += __shfl_xor_sync(FULL_MASK, l_lo, 2);
    l_hi += __shfl_xor_sync(FULL_MASK, l_hi, 1);
    l_hi += __shfl_xor_sync(FULL_MASK, l_hi, 2);
    float inv_lo = l_lo > 0.0f ? 1.0f / l_lo : 0.0f, inv_hi = l_hi > 0.0f ? 1.0f / l_hi : 0.0f;
    st_rows_bf16<D>(r_lo < QL ? out + (((i64)b * QL + r_lo) * Hq + h) * D : nullptr,
                    r_hi < QL ? out + (((i64)b * QL + r_hi) * Hq + h) * D : nullptr, o, inv_lo, inv_hi, t);
    if (t == 0 && r_lo < QL) lse[((i64)b * Hq + h) * QL + r_lo] = (m_lo + log2f(l_lo)) * LN2;
    if (t == 0 && r_hi < QL) lse[((i64)b * Hq + h) * QL + r_hi] = (m_hi + log2f(l_hi)) * LN2;
}

// flash_forward_d<D>_w<warps>_s<stages>, and the same name ending in _var (window and soft-cap). Four-warp blocks
// ask for two blocks per multiprocessor (255 registers), eight-warp ones for one.
#define FLASH_FORWARD_KERNEL(D, W, S, SUFFIX, VARIANT)                                                                      \
    extern "C" __global__ void __launch_bounds__(W * 32, 8 / W) flash_forward_d##D##_w##W##_s##S##SUFFIX(bf16_t* out,   \
        float* lse, const bf16_t* q, const bf16_t* k, const bf16_t* v, const int* seg, int QL, int KL, int kv_cap,       \
        int Hq, int Hkv, float scale, int window, float cap)                                                               \
    { flash_forward<D, W, S, VARIANT>(out, lse, q, k, v, seg, QL, KL, kv_cap, Hq, Hkv, scale, window, cap); }
#define FLASH_FORWARD(D, W, S) FLASH_FORWARD_KERNEL(D, W, S, , false) FLASH_FORWARD_KERNEL(D, W, S, _var, true)
FLASH_FORWARD(64, 4, 1)
FLASH_FORWARD(64, 4, 2)
FLASH_FORWARD(64, 8, 2)
FLASH_FORWARD(128, 4, 1)
FLASH_FORWARD(128, 4, 2)
FLASH_FORWARD(128, 8, 2)
FLASH_FORWARD(256, 4, 1)
FLASH_FORWARD(256, 4, 2)

// ---------------------------------------------------------------------------------------------------------
// Backward, dQ. Block: WARPS warps × 16 query rows of one (batch, head); key tiles of BN, double-buffered by
// cp.async. Needs lse and delta = rowsum(dO ⊙ O).
// P = exp(c − lse) with c the (capped) scaled score, dP = dO·Vᵀ, dS = P ⊙ (dP − delta) (⊙ ∂c/∂s), dQ = scale·dS·K.
// A key tile wholly below the diagonal, inside the block's segment (and inside every row's window) skips the mask
// (block-uniform test: segments are contiguous runs, so seg[j0] == seg[last row] puts everything between in one
// segment). With a window the key loop starts at the first tile the block's first row can reach.
// Dynamic shared memory: 2 × (K, V tiles [BN][D+8] + BN segment ids), and for head_dim 256 the block's Q and dO
// tiles [16·WARPS][D+8] (QD_SMEM: read per k-step, so the registers hold only dQ's 128-float accumulator and S, dP).
// ---------------------------------------------------------------------------------------------------------
template <int D, int WARPS, int BN, bool VARIANT>
__device__ void flash_backward_dq(bf16_t* dq, const bf16_t* dout, const float* lse, const float* delta, const bf16_t* q,
                                  const bf16_t* k, const bf16_t* v, const int* seg_ids, int T, int Hq, int Hkv, float scale,
                                  int window, float cap)
{
    extern __shared__ __align__(16) unsigned char smem[];
    constexpr int SD = D + 8, BM = WARPS * 16, THREADS = WARPS * 32;
    constexpr bool QD_SMEM = D > 128;
    bf16_t* KsBase = (bf16_t*)smem;                      // [2][BN][SD]
    bf16_t* VsBase = KsBase + 2 * BN * SD;               // [2][BN][SD]
    int* segkBase = (int*)(VsBase + 2 * BN * SD);        // [2][BN]
    bf16_t* Qs = (bf16_t*)(segkBase + 2 * BN);           // [BM][SD], QD_SMEM only
    bf16_t* Dos = Qs + BM * SD;                          // [BM][SD], QD_SMEM only (dO)
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, b = blockIdx.z, kh = h / (Hq / Hkv);
    const int row0 = (gridDim.x - 1 - blockIdx.x) * BM;
    const int r_lo = row0 + warp * 16 + g, r_hi = r_lo + 8;
    const int* seg = seg_ids + (i64)b * T;
    const int last_row = min(T - 1, row0 + BM - 1);
    int first_key = segment_start(seg, row0);
    if (VARIANT && window > 0) first_key = max(first_key, row0 - window + 1);
    const int start = first_key & ~(BN - 1);
    const i64 kv_row_base = (i64)b * T;
    // Shared addresses kept in registers (as the forward): this lane's ldmatrix rows in stage 0 of K ([n][k] and
    // [k][n] reads) and V, and in the Q, dO tiles.
    constexpr unsigned STAGE_BYTES = BN * SD * 2;
    const unsigned k_nk = smem_addr(KsBase) + lane_off_b_nk(SD, lane) * 2, k_kn = smem_addr(KsBase) + lane_off_a(SD, lane) * 2;
    const unsigned v_nk = smem_addr(VsBase) + lane_off_b_nk(SD, lane) * 2;
    const unsigned q_a = smem_addr(Qs) + (warp * 16 * SD + lane_off_a(SD, lane)) * 2, d_a = q_a + BM * SD * 2;
    const TileCopy<D, BN, THREADS> kcopy(k, kv_row_base, Hkv, kh, smem_addr(KsBase)), vcopy(v, kv_row_base, Hkv, kh, smem_addr(VsBase));
    // Keys past T are zero-filled with segment id 0; the causal test (j <= r < T) masks them.
    auto issue = [&](int stage, int j)
    {
        kcopy.copy(stage * STAGE_BYTES, j, T, k);
        vcopy.copy(stage * STAGE_BYTES, j, T, v);
        cp_row32<BN, THREADS>(segkBase + stage * BN, seg, j, T);
    };
    issue(0, start);
    if constexpr (QD_SMEM)
    {
        // In the first tile's group: the first wait covers them.
        cp_tile<D, BM, THREADS>(Qs, q, (i64)b * T, row0, T, Hq, h);
        cp_tile<D, BM, THREADS>(Dos, dout, (i64)b * T, row0, T, Hq, h);
    }
    cp_async_commit();

    const int sid_lo = r_lo < T ? seg[r_lo] : -3, sid_hi = r_hi < T ? seg[r_hi] : -3, sid_last = seg[last_row];
    const float sl2 = scale * LOG2E;
    const float* lse_h = lse + ((i64)b * Hq + h) * T;
    const float* delta_h = delta + ((i64)b * Hq + h) * T;
    const float l2_lo = r_lo < T ? lse_h[r_lo] * LOG2E : 0.0f, l2_hi = r_hi < T ? lse_h[r_hi] * LOG2E : 0.0f;
    const float dl_lo = r_lo < T ? delta_h[r_lo] : 0.0f, dl_hi = r_hi < T ? delta_h[r_hi] : 0.0f;
    unsigned qa[QD_SMEM ? 1 : D / 16][4], da[QD_SMEM ? 1 : D / 16][4];
    if constexpr (!QD_SMEM)
    {
        i64 olo = (((i64)b * T + r_lo) * Hq + h) * D, ohi = (((i64)b * T + r_hi) * Hq + h) * D;
        ld_rows_a<D>(qa, r_lo < T ? q + olo : nullptr, r_hi < T ? q + ohi : nullptr, t);
        ld_rows_a<D>(da, r_lo < T ? dout + olo : nullptr, r_hi < T ? dout + ohi : nullptr, t);
    }
    float acc[D / 8][4];
    zero_acc<D / 8>(acc);
    const ScoreVariant var = score_variant(window, cap, scale);

    int it = 0;
    for (int j0 = start; j0 <= last_row; j0 += BN, it++)
    {
        const int cur = it & 1;
        if (j0 + BN <= last_row) issue(cur ^ 1, j0 + BN);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        const unsigned so = cur * STAGE_BYTES;
        const int* segk = segkBase + cur * BN;

        float s[BN / 8][4], dp[BN / 8][4];
        zero_acc<BN / 8>(s);
        zero_acc<BN / 8>(dp);
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
        {
            unsigned qf[4], df[4];
            if constexpr (QD_SMEM)
            {
                ldsm_x4_at(qf, q_a + kk * 16 * 2);
                ldsm_x4_at(df, d_a + kk * 16 * 2);
            }
            else
            {
#pragma unroll
                for (int r = 0; r < 4; r++) { qf[r] = qa[kk][r]; df[r] = da[kk][r]; }
            }
#pragma unroll
            for (int np = 0; np < BN / 16; np++)
            {
                unsigned bk[4], bv[4];
                ldsm_x4_at(bk, k_nk + so + (np * 16 * SD + kk * 16) * 2);
                ldsm_x4_at(bv, v_nk + so + (np * 16 * SD + kk * 16) * 2);
                mma16816(s[2 * np], qf, bk[0], bk[1]);
                mma16816(s[2 * np + 1], qf, bk[2], bk[3]);
                mma16816(dp[2 * np], df, bv[0], bv[1]);
                mma16816(dp[2 * np + 1], df, bv[2], bv[3]);
            }
        }
        if constexpr (VARIANT)
        {
            // Whole tile visible: below the diagonal, one segment, and its first key inside the last row's window.
            const bool whole = j0 + BN - 1 <= row0 && segk[0] == sid_last && row0 + BM - 1 - j0 < var.win;
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                {
                    int col = nt * 8 + 2 * t + (e & 1), j = j0 + col;
                    bool lo = e < 2;
                    int r = lo ? r_lo : r_hi;
                    bool ok = whole || (j <= r && r - j < var.win && segk[col] == (lo ? sid_lo : sid_hi));
                    float dcap;
                    float x = variant_logit2(var, s[nt][e], sl2, dcap);
                    float p = ok ? exp2_ftz(x - (lo ? l2_lo : l2_hi)) : 0.0f;
                    s[nt][e] = p * (dp[nt][e] - (lo ? dl_lo : dl_hi)) * dcap; // dS (w.r.t. the scaled score)
                }
        }
        else if (j0 + BN - 1 <= row0 && segk[0] == sid_last)
        {
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                {
                    bool lo = e < 2;
                    float p = exp2_ftz(fmaf(s[nt][e], sl2, -(lo ? l2_lo : l2_hi)));
                    s[nt][e] = p * (dp[nt][e] - (lo ? dl_lo : dl_hi)); // dS
                }
        }
        else
        {
#pragma unroll
            for (int nt = 0; nt < BN / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                {
                    int col = nt * 8 + 2 * t + (e & 1), j = j0 + col;
                    bool lo = e < 2;
                    bool ok = lo ? (j <= r_lo && segk[col] == sid_lo) : (j <= r_hi && segk[col] == sid_hi);
                    float p = ok ? exp2_ftz(fmaf(s[nt][e], sl2, -(lo ? l2_lo : l2_hi))) : 0.0f;
                    s[nt][e] = p * (dp[nt][e] - (lo ? dl_lo : dl_hi)); // dS
                }
        }
#pragma unroll
        for (int kk = 0; kk < BN / 16; kk++)
        {
            unsigned a[4];
            acc_to_a(a, s[2 * kk], s[2 * kk + 1]);
#pragma unroll
            for (int dp2 = 0; dp2 < D / 16; dp2++)
            {
                unsigned bb[4];
                ldsm_x4_trans_at(bb, k_kn + so + (kk * 16 * SD + dp2 * 16) * 2);
                mma16816(acc[2 * dp2], a, bb[0], bb[1]);
                mma16816(acc[2 * dp2 + 1], a, bb[2], bb[3]);
            }
        }
        __syncthreads(); // every warp is done with stage `cur` before it is refilled
    }
    i64 olo = (((i64)b * T + r_lo) * Hq + h) * D, ohi = (((i64)b * T + r_hi) * Hq + h) * D;
    st_rows_bf16<D>(r_lo < T ? dq + olo : nullptr, r_hi < T ? dq + ohi : nullptr, acc, scale, scale, t);
}

// flash_backward_dq_d<D>_w<warps>_n<key tile>, and the same name ending in _var (window and soft-cap).
#define FLASH_DQ_KERNEL(D, W, BN, SUFFIX, VARIANT)                                                                          \
    extern "C" __global__ void __launch_bounds__(W * 32) flash_backward_dq_d##D##_w##W##_n##BN##SUFFIX(bf16_t* dq,      \
        const bf16_t* dout, const float* lse, const float* delta, const bf16_t* q, const bf16_t* k, const bf16_t* v,       \
        const int* seg, int T, int Hq, int Hkv, float scale, int window, float cap)                                        \
    { flash_backward_dq<D, W, BN, VARIANT>(dq, dout, lse, delta, q, k, v, seg, T, Hq, Hkv, scale, window, cap); }
#define FLASH_DQ(D, W, BN) FLASH_DQ_KERNEL(D, W, BN, , false) FLASH_DQ_KERNEL(D, W, BN, _var, true)
FLASH_DQ(64, 4, 32)
FLASH_DQ(64, 4, 64)
FLASH_DQ(128, 4, 32)
FLASH_DQ(128, 4, 64)
FLASH_DQ(256, 4, 32)
FLASH_DQ(256, 8, 32)

// ---------------------------------------------------------------------------------------------------------
// Backward, dK and dV. Block: WARPS warps × 16 key rows of one (batch, query head); query tiles of BM (Q, dO,
// lse, delta, segment ids) double-buffered by cp.async. Transposed products: Sᵀ = K·Qᵀ, dPᵀ = V·dOᵀ,
// dV_h = Pᵀ·dO, dK_h = scale·dSᵀ·Q. With grouped-query attention each query head's share goes to F32
// partials [B, T, Hq, D] that flash_dkv_reduce sums over the group (one block per query head keeps the GPU full
// and the sums deterministic); without grouping it is written directly. For head_dim 64 the warp's K and V
// fragments stay in registers. With a window the query loop stops after the last query that sees the block's
// last key (i − j < window). Dynamic shared memory: K, V [16·WARPS][D+8] + 2 × (Q, dO [BM][D+8] + 3·BM words).
//
// DA: the head dims whose dK, dV this block accumulates (columns DA·c … DA·c + DA−1, c = blockIdx.x % (D/DA)).
// DA = D below 256. At head_dim 256 the two accumulators of 16 keys × 256 would take 256 floats per lane, more than
// the 255 registers a thread has, so DA = 128: two blocks per key tile, each computing S and dP over all of D
// (the tile's Q and dO come from L2 twice) but accumulating half of dK and dV. That keeps every warp's code the
// D ≤ 128 kernel's, at the cost of doing the two score products twice; accumulating in shared memory instead would
// need 128 KiB of fp32 per block beside the tiles and a read-modify-write of it per query tile.
// ---------------------------------------------------------------------------------------------------------
template <int D, int WARPS, int BM, int DA, bool VARIANT>
__device__ void flash_backward_dkv(bf16_t* dk, bf16_t* dv, float* dk_part, float* dv_part, const bf16_t* dout, const float* lse,
                                   const float* delta, const bf16_t* q, const bf16_t* k, const bf16_t* v, const int* seg_ids,
                                   int T, int Hq, int Hkv, float scale, int window, float cap)
{
    extern __shared__ __align__(16) unsigned char smem[];
    constexpr int SD = D + 8, BN = WARPS * 16, THREADS = WARPS * 32, SPLITS = D / DA;
    constexpr bool KV_REGS = D <= 64;
    bf16_t* Ks = (bf16_t*)smem;                       // [BN][SD]
    bf16_t* Vs = Ks + BN * SD;                        // [BN][SD]
    bf16_t* QsBase = Vs + BN * SD;                    // [2][BM][SD]
    bf16_t* DsBase = QsBase + 2 * BM * SD;            // [2][BM][SD]  (dO)
    float* lseBase = (float*)(DsBase + 2 * BM * SD);  // [2][BM]  (natural log)
    float* delBase = lseBase + 2 * BM;                // [2][BM]
    int* segqBase = (int*)(delBase + 2 * BM);         // [2][BM]

    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int h = blockIdx.y, b = blockIdx.z, group = Hq / Hkv, kh = h / group;
    const int j0 = (blockIdx.x / SPLITS) * BN, col0 = (blockIdx.x % SPLITS) * DA;
    const int j_lo = j0 + warp * 16 + g, j_hi = j_lo + 8;
    const int* seg = seg_ids + (i64)b * T;
    const i64 row_base = (i64)b * T;
    const float* lse_h = lse + ((i64)b * Hq + h) * T;
    const float* delta_h = delta + ((i64)b * Hq + h) * T;
    // Shared addresses kept in registers (as the forward): this lane's ldmatrix rows in the K, V tiles and in stage 0
    // of the Q and dO tiles ([n][k] and [k][n] reads).
    constexpr unsigned STAGE_BYTES = BM * SD * 2;
    const unsigned k_a = smem_addr(Ks) + (warp * 16 * SD + lane_off_a(SD, lane)) * 2, v_a = k_a + BN * SD * 2;
    const unsigned q_nk = smem_addr(QsBase) + lane_off_b_nk(SD, lane) * 2, q_kn = smem_addr(QsBase) + lane_off_a(SD, lane) * 2;
    const unsigned d_nk = smem_addr(DsBase) + lane_off_b_nk(SD, lane) * 2, d_kn = smem_addr(DsBase) + lane_off_a(SD, lane) * 2;
    const TileCopy<D, BM, THREADS> qcopy(q, row_base, Hq, h, smem_addr(QsBase)), dcopy(dout, row_base, Hq, h, smem_addr(DsBase));
    // Queries past T are zero-filled (Q, dO, lse, delta, segment id 0); `i < q_end` masks them.
    auto issue = [&](int stage, int i)
    {
        qcopy.copy(stage * STAGE_BYTES, i, T, q);
        dcopy.copy(stage * STAGE_BYTES, i, T, dout);
        cp_row32<BM, THREADS>(lseBase + stage * BM, lse_h, i, T);
        cp_row32<BM, THREADS>(delBase + stage * BM, delta_h, i, T);
        cp_row32<BM, THREADS>(segqBase + stage * BM, seg, i, T);
    };
    cp_tile<D, BN, THREADS>(Ks, k, row_base, j0, T, Hkv, kh);
    cp_tile<D, BN, THREADS>(Vs, v, row_base, j0, T, Hkv, kh);
    issue(0, j0);
    cp_async_commit();

    const int sid_lo = j_lo < T ? seg[j_lo] : -3, sid_hi = j_hi < T ? seg[j_hi] : -3, sid_first = seg[j0];
    const float sl2 = scale * LOG2E;
    const int last_key = min(T - 1, j0 + BN - 1);
    int q_end = segment_end(seg, last_key, T);
    if (VARIANT && window > 0) q_end = min(q_end, last_key + window);
    float dka[DA / 8][4], dva[DA / 8][4];
    zero_acc<DA / 8>(dka);
    zero_acc<DA / 8>(dva);
    unsigned kreg[KV_REGS ? D / 16 : 1][4], vreg[KV_REGS ? D / 16 : 1][4];
    const ScoreVariant var = score_variant(window, cap, scale);

    int it = 0;
    for (int i0 = j0; i0 < q_end; i0 += BM, it++)
    {
        const int cur = it & 1;
        if (i0 + BM < q_end) issue(cur ^ 1, i0 + BM);
        cp_async_commit();
        cp_async_wait<1>();
        __syncthreads();
        if constexpr (KV_REGS)
        {
            if (it == 0)
            {
#pragma unroll
                for (int kk = 0; kk < D / 16; kk++)
                {
                    ldsm_x4_at(kreg[kk], k_a + kk * 16 * 2);
                    ldsm_x4_at(vreg[kk], v_a + kk * 16 * 2);
                }
            }
        }
        const unsigned so = cur * STAGE_BYTES;
        const float* lse_s = lseBase + cur * BM;
        const float* del_s = delBase + cur * BM;
        const int* segq = segqBase + cur * BM;

        float s[BM / 8][4], dp[BM / 8][4];
        zero_acc<BM / 8>(s);
        zero_acc<BM / 8>(dp);
#pragma unroll
        for (int kk = 0; kk < D / 16; kk++)
        {
            unsigned ka[4], va[4];
            if constexpr (KV_REGS)
            {
#pragma unroll
                for (int r = 0; r < 4; r++) { ka[r] = kreg[kk][r]; va[r] = vreg[kk][r]; }
            }
            else
            {
                ldsm_x4_at(ka, k_a + kk * 16 * 2);
                ldsm_x4_at(va, v_a + kk * 16 * 2);
            }
#pragma unroll
            for (int np = 0; np < BM / 16; np++)
            {
                unsigned bq[4], bd[4];
                ldsm_x4_at(bq, q_nk + so + (np * 16 * SD + kk * 16) * 2);
                ldsm_x4_at(bd, d_nk + so + (np * 16 * SD + kk * 16) * 2);
                mma16816(s[2 * np], ka, bq[0], bq[1]);
                mma16816(s[2 * np + 1], ka, bq[2], bq[3]);
                mma16816(dp[2 * np], va, bd[0], bd[1]);
                mma16816(dp[2 * np + 1], va, bd[2], bd[3]);
            }
        }
        if constexpr (VARIANT)
        {
            // Whole tile visible: as below, and the tile's last query inside the first key's window.
            const bool whole = i0 >= j0 + BN - 1 && i0 + BM <= q_end && segq[BM - 1] == sid_first && i0 + BM - 1 - j0 < var.win;
#pragma unroll
            for (int nt = 0; nt < BM / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                {
                    int col = nt * 8 + 2 * t + (e & 1), i = i0 + col;
                    bool lo = e < 2;
                    int j = lo ? j_lo : j_hi;
                    bool ok = whole || (i < q_end && i >= j && i - j < var.win && segq[col] == (lo ? sid_lo : sid_hi));
                    float dcap;
                    float x = variant_logit2(var, s[nt][e], sl2, dcap);
                    float p = ok ? exp2_ftz(x - lse_s[col] * LOG2E) : 0.0f;
                    s[nt][e] = p;
                    dp[nt][e] = p * (dp[nt][e] - del_s[col]) * dcap;
                }
        }
        // Whole tile visible: every query at or after every key of the block, all valid, one segment.
        else if (i0 >= j0 + BN - 1 && i0 + BM <= q_end && segq[BM - 1] == sid_first)
        {
#pragma unroll
            for (int nt = 0; nt < BM / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                {
                    int col = nt * 8 + 2 * t + (e & 1);
                    float p = exp2_ftz(fmaf(s[nt][e], sl2, -lse_s[col] * LOG2E));
                    s[nt][e] = p;
                    dp[nt][e] = p * (dp[nt][e] - del_s[col]);
                }
        }
        else
        {
#pragma unroll
            for (int nt = 0; nt < BM / 8; nt++)
#pragma unroll
                for (int e = 0; e < 4; e++)
                {
                    int col = nt * 8 + 2 * t + (e & 1), i = i0 + col;
                    bool lo = e < 2;
                    bool ok = i < q_end && (lo ? (i >= j_lo && segq[col] == sid_lo) : (i >= j_hi && segq[col] == sid_hi));
                    float p = ok ? exp2_ftz(fmaf(s[nt][e], sl2, -lse_s[col] * LOG2E)) : 0.0f;
                    s[nt][e] = p;
                    dp[nt][e] = p * (dp[nt][e] - del_s[col]);
                }
        }
#pragma unroll
        for (int kk = 0; kk < BM / 16; kk++)
        {
            unsigned pa[4], da[4];
            acc_to_a(pa, s[2 * kk], s[2 * kk + 1]);
            acc_to_a(da, dp[2 * kk], dp[2 * kk + 1]);
#pragma unroll
            for (int dp2 = 0; dp2 < DA / 16; dp2++)
            {
                unsigned bd[4], bq[4];
                ldsm_x4_trans_at(bd, d_kn + so + (kk * 16 * SD + col0 + dp2 * 16) * 2);
                ldsm_x4_trans_at(bq, q_kn + so + (kk * 16 * SD + col0 + dp2 * 16) * 2);
                mma16816(dva[2 * dp2], pa, bd[0], bd[1]);
                mma16816(dva[2 * dp2 + 1], pa, bd[2], bd[3]);
                mma16816(dka[2 * dp2], da, bq[0], bq[1]);
                mma16816(dka[2 * dp2 + 1], da, bq[2], bq[3]);
            }
        }
        __syncthreads(); // every warp is done with stage `cur` before it is refilled
    }
#pragma unroll
    for (int half = 0; half < 2; half++)
    {
        int j = half == 0 ? j_lo : j_hi;
        if (j >= T) continue;
        int e0 = half * 2;
        if (dk_part != nullptr)
        {
            i64 o = (((i64)b * T + j) * Hq + h) * D + col0;
#pragma unroll
            for (int d = 0; d < DA / 8; d++)
            {
                *(float2*)(dk_part + o + d * 8 + 2 * t) = make_float2(dka[d][e0] * scale, dka[d][e0 + 1] * scale);
                *(float2*)(dv_part + o + d * 8 + 2 * t) = make_float2(dva[d][e0], dva[d][e0 + 1]);
            }
        }
        else
        {
            i64 o = (((i64)b * T + j) * Hkv + kh) * D + col0;
#pragma unroll
            for (int d = 0; d < DA / 8; d++)
            {
                *(unsigned*)(dk + o + d * 8 + 2 * t) = pack_bf16(dka[d][e0] * scale, dka[d][e0 + 1] * scale);
                *(unsigned*)(dv + o + d * 8 + 2 * t) = pack_bf16(dva[d][e0], dva[d][e0 + 1]);
            }
        }
    }
}

// flash_backward_dkv_d<D>_w<warps>_m<query tile>, and the same name ending in _var (window and soft-cap).
// Grid x: key tiles × D/DA (FlashBackwardTiles.DkvColumnSplits).
#define FLASH_DKV_DA(D) ((D) > 128 ? 128 : (D))
#define FLASH_DKV_KERNEL(D, W, BM, SUFFIX, VARIANT)                                                                         \
    extern "C" __global__ void __launch_bounds__(W * 32) flash_backward_dkv_d##D##_w##W##_m##BM##SUFFIX(bf16_t* dk,     \
        bf16_t* dv, float* dk_part, float* dv_part, const bf16_t* dout, const float* lse, const float* delta,             \
        const bf16_t* q, const bf16_t* k, const bf16_t* v, const int* seg, int T, int Hq, int Hkv, float scale,           \
        int window, float cap)                                                                                             \
    {                                                                                                                      \
        flash_backward_dkv<D, W, BM, FLASH_DKV_DA(D), VARIANT>(dk, dv, dk_part, dv_part, dout, lse, delta, q, k, v, seg,  \
                                                               T, Hq, Hkv, scale, window, cap);                            \
    }
#define FLASH_DKV(D, W, BM) FLASH_DKV_KERNEL(D, W, BM, , false) FLASH_DKV_KERNEL(D, W, BM, _var, true)
FLASH_DKV(64, 4, 32)
FLASH_DKV(64, 4, 64)
FLASH_DKV(128, 4, 32)
FLASH_DKV(128, 4, 64)
FLASH_DKV(256, 4, 32)
FLASH_DKV(256, 8, 32)

// dk[b, j, kh, :] = Σ_{h in group kh} dk_part[b, j, h, :] (and dv), rounded to bf16 once.
extern "C" __global__ void flash_dkv_reduce(bf16_t* dk, bf16_t* dv, const float* dk_part, const float* dv_part, i64 rows, int Hq, int Hkv, int D)
{
    int group = Hq / Hkv;
    GRID_STRIDE(e, rows * Hkv * D)
    {
        int d = (int)(e % D);
        i64 rk = e / D;             // (b·T + j)·Hkv + kh
        int kh = (int)(rk % Hkv);
        i64 row = rk / Hkv;
        i64 src = (row * Hq + (i64)kh * group) * D + d;
        float a = 0.0f, c = 0.0f;
        for (int gi = 0; gi < group; gi++) { a += dk_part[src + (i64)gi * D]; c += dv_part[src + (i64)gi * D]; }
        dk[e] = f32_to_bf16(a);
        dv[e] = f32_to_bf16(c);
    }
}

// cuDNN's deterministic backward in query-head slices (CudnnAttention.BackwardDeterministic, long sequences): the
// slices' bf16 dK and dV partials of one key/value head, [parts][rows][D] each, summed in slice order in f32 into
// that head's columns of dk and dv (rows ld elements apart). Deterministic: no atomics, a fixed order.
extern "C" __global__ void sum_head_partials(bf16_t* dk, bf16_t* dv, const bf16_t* dk_parts, const bf16_t* dv_parts, int parts, i64 rows, int D,
                                             int ld)
{
    GRID_STRIDE(e, rows * D)
    {
        i64 r = e / D;
        int d = (int)(e % D);
        float a = 0.0f, c = 0.0f;
        for (int p = 0; p < parts; p++)
        {
            a += bf16_to_f32(dk_parts[(i64)p * rows * D + e]);
            c += bf16_to_f32(dv_parts[(i64)p * rows * D + e]);
        }
        dk[r * ld + d] = f32_to_bf16(a);
        dv[r * ld + d] = f32_to_bf16(c);
    }
}
