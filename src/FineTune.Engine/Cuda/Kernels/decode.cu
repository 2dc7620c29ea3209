// A decode step's fused layer kernels (steps of one or two tokens: CausalLM.DecodeLayer, CudaBackend.Decode.cs). Each
// replaces a chain of small launches with one and keeps the chain's arithmetic and rounding points, so the fused and
// the unfused step give the same bits:
//   gemv_norm_set     ln = rmsnorm(x), c_j = ln·B_jᵀ (up to three: q/k/v)     rmsnorm_forward_v8 + gemv_bf16_set
//   gemv_norm_swiglu  ln = rmsnorm(x), h = silu(ln·Gᵀ)⊙(ln·Uᵀ)                rmsnorm_forward_v8 + gemv_bf16_set + swiglu_forward_v8
//   gemv_residual     y = round(a·Bᵀ) + r                                     gemv_bf16 + ft_add_v8
//   qk_rope_cache     per-head q/k RMSNorm (qwen3), RoPE, K/V into the cache  rmsnorm_forward_v8 ×2 + rope_apply ×2 + scatter_rows ×2
// The products follow gemv.cu (one warp per output column — or C of them, dec_columns — 16-byte streaming loads of the
// weight, fp32 sums in the same order); the weight's first loads are issued before anything that reads the previous kernel's output. Each
// kernel lets its dependent launch at once (pdl_trigger) and waits (pdl_wait) before reading what the kernel before it
// wrote: with programmatic dependent launch on (CudaBackend.UseDependentLaunch) a step's chain of GEMVs streams weights
// while the previous kernel drains. Launched so (pf = 1), a block also prefetches into L2, before it waits, the rest of
// its warps' weight rows (past the first batch its registers hold) and the norm weight (dec_prefetch): weights never
// depend on the kernel before, and the prefetch only warms L2, so the bits are those of a plain launch. Warps per
// block: blockDim.x / 32 (CudaBackend.DecodeWarps; gemv_norm_swiglu's in pairs, CudaBackend.SwiGluWarps). The normed
// rows live in shared memory, computed once per block (a row of x is at most DEC_MAX_K values); gemv_residual copies
// its input rows there as they are.
#include "mma.cuh"             // common.cuh, and the cp.async helpers decode_layer streams its weights with
#include "split_attention.cuh" // decode_layer's attention stage

#define DEC_MAX_M 2
#define DEC_U 8
#define DEC_MAX_K 8192

// One batch of a weight row's 16-byte chunks, DEC_U per lane (zeros past the row or for a warp without a column).
__device__ __forceinline__ void dec_load(uint4 (&w)[DEC_U], const uint4* brow, int q0, int chunks, int lane)
{
#pragma unroll
    for (int u = 0; u < DEC_U; u++)
    {
        int q = q0 + u * 32 + lane;
        w[u] = brow != nullptr && q < chunks ? __ldcs(brow + q) : make_uint4(0u, 0u, 0u, 0u);
    }
}

// With pf: the part of a weight row past the batch dec_load put in registers (the whole of a row up to 32·DEC_U
// chunks is already on its way), into L2 before pdl_wait.
__device__ __forceinline__ void dec_prefetch(const uint4* brow, int chunks, int lane, int pf)
{
    if (pf && brow != nullptr && chunks > 32 * DEC_U) prefetch_l2(brow + 32 * DEC_U, (i64)(chunks - 32 * DEC_U) * 16, lane);
}

// With pf: warp 0 prefetches the norm weight (K bf16), the first thing dec_norm_rows reads after the wait besides x.
__device__ __forceinline__ void dec_prefetch_norm(const uint4* nw, int K, int pf)
{
    if (pf && threadIdx.x < 32) prefetch_l2(nw, (i64)K * 2, threadIdx.x);
}

// acc[m] += the batch's dot products with rows m of a ([M, chunks] uint4), in gemv_column's order.
__device__ __forceinline__ void dec_fma(float (&acc)[DEC_MAX_M], const uint4 (&w)[DEC_U], const uint4* a, int M, int q0, int chunks, int lane)
{
#pragma unroll
    for (int u = 0; u < DEC_U; u++)
    {
        int q = q0 + u * 32 + lane;
        if (q >= chunks) continue;
        float wv[8];
        unpack8(w[u], wv);
#pragma unroll
        for (int m = 0; m < DEC_MAX_M; m++)
        {
            if (m >= M) break;
            float av[8];
            unpack8(a[(i64)m * chunks + q], av);
            float s = 0.0f;
#pragma unroll
            for (int j = 0; j < 8; j++) s += wv[j] * av[j];
            acc[m] += s;
        }
    }
}

// Cross-column pipelining (CudaBackend.DecodeColumns, C; FineTune issue 14). With one column a warp, a column of K =
// 2048 … 4096 is one or two batches: each warp pays a whole memory latency at its start (nothing in flight before its
// first batch) and at its end (warp_sum and the store with nothing in flight). With C > 1 a warp takes the columns
// col, col + G, col + 2G, … (G: the grid's warps; at most C of them, all below N) and issues the next column's first
// batch before the current column's last batch arithmetic, warp_sum and store, so its loads stay in flight from column
// to column. Strided rather than a contiguous range: each round of the grid still covers G adjacent columns, the rows
// that C = 1's grid of G warps would read together (the same DRAM pattern), and the tail of an N that is not a
// multiple of G·C idles warps of every block alike instead of whole blocks at the end.
// Same bits for every C: a column's sums depend on the column alone — acc starts at 0, takes dec_fma of batch q0 =
// 0, 32·DEC_U, … in order from the same 16-byte chunks (whichever buffer the batch was loaded into, and whether before
// or after pdl_wait: the weight does not depend on the kernel before), then the same warp_sum and the same store. Only
// when a load is issued moves, never an fp32 operation, so C > 1 gives C = 1's bits, and C = 1 computes each column as
// before (no next column: the loop runs once and never takes the next-column load).
// One buffer a row (R rows a column; every kernel here takes R = 1 since gemv_norm_swiglu splits gate and up between
// a pair of warps, 2026-12-04): a row's buffer is refilled right after that row's arithmetic — with its next batch,
// or at the column's last batch with the next column's first. One load site a row, the source picked before it: two
// sites (this column's next batch, the next column's first) cost 10–15 registers a thread more (NVRTC 11.8, sm_90).
// R = 1 double-buffered within the column until 2026-12-04 (the next batch loading during this batch's arithmetic):
// with the input in shared memory the single buffer is faster on every decode shape measured (H200,
// docs/device-results/h200-2026-12-04/gemv_lab.py: 4096×14336 32.0 against 33.5 µs) and takes fewer registers.
// rows(col, r): row r of column col; done(col, acc): the column's sums acc[r][m] (warp_sum, store). On entry w holds the
// first column's first batch (loaded before pdl_wait).
template <int R, class Rows, class Done>
__device__ __forceinline__ void dec_columns(uint4 (&w)[R][DEC_U], Rows rows, Done done, const uint4* a, int M, int chunks, int lane,
                                            int col, int N, int G, int C)
{
    for (int i = 0;; i++)
    {
        const uint4* brow[R];
#pragma unroll
        for (int r = 0; r < R; r++) brow[r] = rows(col, r);
        int ncol = col + G;
        bool next_col = i + 1 < C && ncol < N;
        float acc[R][DEC_MAX_M];
#pragma unroll
        for (int r = 0; r < R; r++)
#pragma unroll
            for (int m = 0; m < DEC_MAX_M; m++) acc[r][m] = 0.0f;
        for (int q0 = 0; q0 < chunks; q0 += 32 * DEC_U)
        {
            bool more = q0 + 32 * DEC_U < chunks;
#pragma unroll
            for (int r = 0; r < R; r++)
            {
                dec_fma(acc[r], w[r], a, M, q0, chunks, lane);
                const uint4* src = more ? brow[r] : next_col ? rows(ncol, r) : nullptr;
                if (src != nullptr) dec_load(w[r], src, more ? q0 + 32 * DEC_U : 0, chunks, lane);
            }
        }
        done(col, acc);
        if (!next_col) return;
        col = ncol;
    }
}

// With pf: the warp's later columns' rows (whole: no batch of them is in registers yet) into L2 before pdl_wait, as
// dec_prefetch does for the first column's.
template <int R, class Rows>
__device__ __forceinline__ void dec_prefetch_columns(Rows rows, int chunks, int lane, int col, int N, int G, int C, int pf)
{
    if (!pf) return;
    for (int i = 1; i < C && col + i * G < N; i++)
#pragma unroll
        for (int r = 0; r < R; r++) prefetch_l2(rows(col + i * G, r), (i64)chunks * 16, lane);
}

// A product's sum rounded as the unfused MatMul stores it, plus the residual as ft_add adds it (gemv_residual, decode_layer).
__device__ __forceinline__ unsigned short dec_residual(float s, unsigned short r)
{
    return f32_to_bf16(bf16_to_f32(f32_to_bf16(s)) + 1.0f * bf16_to_f32(r));
}
// h = silu(gate)·up from the rounded gate and up, swiglu.cu's swiglu_value rounded to bf16 (gemv_norm_swiglu, decode_layer).
__device__ __forceinline__ unsigned short dec_swiglu(float gv, float uv)
{
    return f32_to_bf16(gv * (1.0f / (1.0f + expf(-gv))) * uv);
}

// xs = rmsnorm(x) for rows 0 … M−1 of x [M, K] (weight nw [K]) with rmsnorm_forward_v8's arithmetic: warp m sums row
// m's squares lane by lane, the block then scales every value. Block 0 also writes ln and rstd (what RmsNorm writes).
// Called by every thread of the block.
__device__ __forceinline__ void dec_norm_rows(uint4* xs, const uint4* x, const uint4* nw, int M, int K, float eps, float off,
                                              uint4* ln, float* rstd)
{
    __shared__ float inv_s[DEC_MAX_M];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, c8 = K >> 3;
    if (warp < M)
    {
        float inv = rms_rstd_v8(x + (i64)warp * c8, K, eps, lane);
        if (lane == 0)
        {
            inv_s[warp] = inv;
            if (blockIdx.x == 0) rstd[warp] = inv;
        }
    }
    __syncthreads();
    for (int i = threadIdx.x; i < M * c8; i += blockDim.x)
    {
        int m = i / c8, c = i - m * c8;
        uint4 packed = rms_scale_v8(x[i], nw[c], inv_s[m], off);
        xs[i] = packed;
        if (blockIdx.x == 0) ln[i] = packed;
    }
    __syncthreads();
}
// (Tried 2026-12-04 and not kept: every thread copying x and nw into shared memory first, then summing and scaling
// from there, one round trip to L2 instead of several: on the H200 the 8B shape's gate/up and q/k/v kernels ran 65.6
// and 22.0 µs against 62.6 and 20.7, single stream ~2 % slower; docs/device-results/h200-2026-12-04/run3.)

// ln = rmsnorm(x); c_i = ln·B_iᵀ for up to three weights B_i [N_i, K]; the columns of the products laid end to end (as
// gemv_bf16_set), C to a warp (dec_columns). Dynamic shared memory: M·K bf16.
template <class Wait>
__device__ __forceinline__ void gemv_norm_set_body(const uint4* x, const uint4* nw, float eps, float off, uint4* ln, float* rstd,
                                                   int M, int K, int count,
                                                   unsigned short* c0, const uint4* b0, int n0,
                                                   unsigned short* c1, const uint4* b1, int n1,
                                                   unsigned short* c2, const uint4* b2, int n2, uint4* xs, int pf, int C, Wait wait)
{
    pdl_trigger();
    int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, chunks = K >> 3;
    int G = gridDim.x * warps, n = blockIdx.x * warps + warp;
    int total = n0 + (count > 1 ? n1 : 0) + (count > 2 ? n2 : 0);
    // Column col of the products end to end is column col − n0 − … of the product it falls in (below total, so a
    // product past count is never reached).
    auto row = [&](int col, int) -> const uint4*
    {
        if (col >= total) return nullptr;
        if (col < n0) return b0 + (i64)col * chunks;
        col -= n0;
        return col < n1 ? b1 + (i64)col * chunks : b2 + (i64)(col - n1) * chunks;
    };
    auto done = [&](int col, float (&acc)[1][DEC_MAX_M])
    {
        unsigned short* c = c0;
        int N = n0;
        if (col >= n0)
        {
            col -= n0; c = c1; N = n1;
            if (col >= n1) { col -= n1; c = c2; N = n2; }
        }
#pragma unroll
        for (int m = 0; m < DEC_MAX_M; m++)
        {
            if (m >= M) break;
            float s = warp_sum(acc[0][m]);
            if (lane == 0) c[(i64)m * N + col] = f32_to_bf16(s);
        }
    };
    uint4 w[1][DEC_U];
    dec_load(w[0], row(n, 0), 0, chunks, lane);
    dec_prefetch(row(n, 0), chunks, lane, pf);
    dec_prefetch_columns<1>(row, chunks, lane, n, total, G, C, pf);
    dec_prefetch_norm(nw, K, pf);
    wait();
    dec_norm_rows(xs, x, nw, M, K, eps, off, ln, rstd);
    if (n < total) dec_columns<1>(w, row, done, xs, M, chunks, lane, n, total, G, C);
}

// ln = rmsnorm(x); gate = ln·Gᵀ, up = ln·Uᵀ (G, U [N, K]), h = silu(gate)⊙up, each rounded to bf16 where the unfused
// chain stores it. A pair of warps takes a column: the even warp streams its gate row, the odd one its up row (each one
// row a warp, dec_columns<1>, C columns a pair), each stores its rounded sum and leaves it in shared memory, and after the
// pair's barrier the even warp computes h. One row a warp streams faster than both rows a warp (the pair split, H200
// 2026-12-04: docs/serving.md), and a row's sums are its own either way, so the bits are the same. The launch takes
// an even number of warps a block, at most 2·DEC_PAIRS (CudaBackend.SwiGluWarps).
#define DEC_PAIRS 8
template <class Wait>
__device__ __forceinline__ void gemv_norm_swiglu_body(const uint4* x, const uint4* nw, float eps, float off, uint4* ln, float* rstd,
                                                      int M, int K, int N, const uint4* g, const uint4* u,
                                                      unsigned short* gate, unsigned short* up, unsigned short* h, uint4* xs, int pf, int C, Wait wait)
{
    // A pair's rounded sums of one column, two slots by column parity: a warp writes slot p of column i + 2 only after
    // the barrier of column i + 1, which its partner reaches only after it has read column i's values from slot p.
    __shared__ unsigned short sums[2][DEC_PAIRS][2][DEC_MAX_M];
    pdl_trigger();
    int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, chunks = K >> 3;
    int pair = warp >> 1, half = warp & 1;
    int G = gridDim.x * (warps >> 1), n = blockIdx.x * (warps >> 1) + pair;
    const uint4* weight = half == 0 ? g : u;
    unsigned short* out = half == 0 ? gate : up;
    int parity = 0;
    auto row = [&](int col, int) -> const uint4* { return col < N ? weight + (i64)col * chunks : nullptr; };
    auto done = [&](int col, float (&acc)[1][DEC_MAX_M])
    {
#pragma unroll
        for (int m = 0; m < DEC_MAX_M; m++)
        {
            if (m >= M) break;
            float s = warp_sum(acc[0][m]);
            if (lane == 0)
            {
                unsigned short v = f32_to_bf16(s);
                out[(i64)m * N + col] = v;
                sums[parity][pair][half][m] = v;
            }
        }
        // The pair's barrier (id 1 + pair; 0 is __syncthreads'): both warps of a pair take the same columns.
        asm volatile("bar.sync %0, 64;" ::"r"(1 + pair) : "memory");
        if (half == 0 && lane == 0)
            for (int m = 0; m < M; m++)
            {
                float gv = bf16_to_f32(sums[parity][pair][0][m]), uv = bf16_to_f32(sums[parity][pair][1][m]);
                h[(i64)m * N + col] = dec_swiglu(gv, uv);
            }
        parity ^= 1;
    };
    uint4 w[1][DEC_U];
    dec_load(w[0], row(n, 0), 0, chunks, lane);
    dec_prefetch(row(n, 0), chunks, lane, pf);
    dec_prefetch_columns<1>(row, chunks, lane, n, N, G, C, pf);
    dec_prefetch_norm(nw, K, pf);
    wait();
    dec_norm_rows(xs, x, nw, M, K, eps, off, ln, rstd);
    if (n < N) dec_columns<1>(w, row, done, xs, M, chunks, lane, n, N, G, C);
}

// y = round(a·Bᵀ) + r: a [M, K], B [N, K], r and y [M, N] (the residual add after o_proj and down_proj); C columns to
// a warp (dec_columns). The block copies a's rows into shared memory (as [M, K/8] uint4, dynamic shared memory M·K
// bf16) after its warps' first weight loads are issued: read from global memory, each lane's a chunks queued behind
// the weight's streaming loads and the product ran at ~2.8 TB/s at down_proj's K = 14,336 against ~3.7 TB/s from
// shared memory (H200, 2026-12-04, docs/serving.md). The arithmetic is the same either way: the bits are gemv_bf16's.
template <class Wait>
__device__ __forceinline__ void gemv_residual_body(unsigned short* y, const uint4* a, const uint4* b, const unsigned short* r, int M, int N, int K,
                                                   uint4* as, int pf, int C, Wait wait)
{
    pdl_trigger();
    int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31, chunks = K >> 3;
    int G = gridDim.x * warps, n = blockIdx.x * warps + warp;
    auto row = [&](int col, int) -> const uint4* { return col < N ? b + (i64)col * chunks : nullptr; };
    auto done = [&](int col, float (&acc)[1][DEC_MAX_M])
    {
#pragma unroll
        for (int m = 0; m < DEC_MAX_M; m++)
        {
            if (m >= M) break;
            float s = warp_sum(acc[0][m]);
            if (lane == 0)
            {
                i64 i = (i64)m * N + col;
                y[i] = dec_residual(s, r[i]);
            }
        }
    };
    uint4 w[1][DEC_U];
    dec_load(w[0], row(n, 0), 0, chunks, lane);
    dec_prefetch(row(n, 0), chunks, lane, pf);
    dec_prefetch_columns<1>(row, chunks, lane, n, N, G, C, pf);
    wait();
    block_stage(as, a, M * chunks);
    if (n < N) dec_columns<1>(w, row, done, as, M, chunks, lane, n, N, G, C);
}

// The entry points (each body also took __launch_bounds__(256, 3) and a cp.async-through-shared-memory form on the H200,
// 2026-12-02: the bounded one was slower — 80 registers, 166 against 183.5 tokens/s on the Llama-3-8B shape — and
// neither is kept; docs/serving.md).
#define DEC_SMEM extern __shared__ uint4 xs[];
// What a body calls where it first reads what the kernel before it wrote (decode_mlp_tail's later stages: the grid barrier).
struct PdlWait
{
    __device__ void operator()() const { pdl_wait(); }
};
#define NORM_SET_PARAMS (const uint4* x, const uint4* nw, float eps, float off, uint4* ln, float* rstd, int M, int K, int count, \
    unsigned short* c0, const uint4* b0, int n0, unsigned short* c1, const uint4* b1, int n1, unsigned short* c2, const uint4* b2, int n2, int pf, int C)
#define NORM_SWIGLU_PARAMS (const uint4* x, const uint4* nw, float eps, float off, uint4* ln, float* rstd, int M, int K, int N, \
    const uint4* g, const uint4* u, unsigned short* gate, unsigned short* up, unsigned short* h, int pf, int C)

extern "C" __global__ void gemv_norm_set NORM_SET_PARAMS
{
    DEC_SMEM gemv_norm_set_body(x, nw, eps, off, ln, rstd, M, K, count, c0, b0, n0, c1, b1, n1, c2, b2, n2, xs, pf, C, PdlWait{});
}
extern "C" __global__ void gemv_norm_swiglu NORM_SWIGLU_PARAMS
{
    DEC_SMEM gemv_norm_swiglu_body(x, nw, eps, off, ln, rstd, M, K, N, g, u, gate, up, h, xs, pf, C, PdlWait{});
}
extern "C" __global__ void gemv_residual(unsigned short* y, const uint4* a, const uint4* b, const unsigned short* r, int M, int N, int K, int pf, int C)
{
    DEC_SMEM gemv_residual_body(y, a, b, r, M, N, K, xs, pf, C, PdlWait{});
}

// Every block of the grid meets here (a cooperative launch: all of them resident). bar[0] counts the blocks in, bar[1]
// is the generation: the last to arrive sets the count back to 0 and moves the generation on, which the others wait
// for, so the barrier is ready again for the next use and the next launch (a CUDA graph replays it). The fences make
// every write before the barrier visible to every block after it.
__device__ __forceinline__ void grid_barrier(unsigned* bar)
{
    __syncthreads();
    if (threadIdx.x == 0)
    {
        volatile unsigned* generation = bar + 1;
        unsigned g = *generation; // read before arriving: it moves only once every block has arrived
        __threadfence();
        if (atomicAdd(bar, 1u) == gridDim.x - 1)
        {
            atomicExch(bar, 0u);
            __threadfence();
            atomicAdd(bar + 1, 1u);
        }
        else
            while (*generation == g) {}
        __threadfence();
    }
    __syncthreads();
}

// A layer's work after its attention in one launch (CausalLM.DecodeLayer's last three operations): mid = round(att·Woᵀ)
// + x; ln, rstd = rmsnorm(mid), h = silu(ln·Gᵀ)⊙(ln·Uᵀ); y = round(h·Dᵀ) + mid — the three kernels' bodies in turn,
// with a grid barrier where each waited for the kernel before (so the same bits), on a grid that stays resident (as
// many blocks as fit the SMs at once: every warp takes columns strided by the grid, C = ⌈N / grid warps⌉). A warp's
// first weight batch of each stage is loaded before it waits at the barrier: weights never depend on the stage
// before. Launched cooperatively (CudaDevice.LaunchCooperative), with pf as a dependent launch too (o_proj's rows then
// prefetched into L2 before its wait, as gemv_residual). Dynamic shared memory: M·max(Ka, I) bf16.
extern "C" __global__ void decode_mlp_tail(unsigned short* mid, const uint4* att, const uint4* wo, const unsigned short* x, int Ka,
                                           const uint4* nw, float eps, uint4* ln, float* rstd, int I, const uint4* wg, const uint4* wu,
                                           unsigned short* gate, unsigned short* up, unsigned short* h, unsigned short* y, const uint4* wd,
                                           int M, int H, unsigned* bar, int pf)
{
    DEC_SMEM
    int warps = blockDim.x >> 5, grid = gridDim.x * warps, pairs = gridDim.x * (warps >> 1);
    auto barrier = [bar] { grid_barrier(bar); };
    gemv_residual_body(mid, att, wo, x, M, H, Ka, xs, pf, (H + grid - 1) / grid, PdlWait{});
    gemv_norm_swiglu_body((const uint4*)mid, nw, eps, 0.0f, ln, rstd, M, H, I, wg, wu, gate, up, h, xs, 0, (I + pairs - 1) / pairs, barrier);
    gemv_residual_body(y, (const uint4*)h, wd, mid, M, H, I, xs, 0, (H + grid - 1) / grid, barrier);
}

// For token t and head h of a step: q heads (h < Hq) and k heads (h < Hkv, after them) are RMS-normed over head_dim
// when a norm weight is given (qwen3's q_norm/k_norm), rotated (rope_apply's rotate-half arithmetic on the rounded
// normed values) and stored to q / k; a k head's warp also writes its rotated K row and the V row into the cache at
// cache_rows[t]. One warp per head, lane l holding elements 8l … 8l+7 (D = 64, 128 or 256: D/8 lanes, the rotation's
// partner half D/16 lanes away; head_norm_rope_v8 in common.cuh).
extern "C" __global__ void qk_rope_cache(uint4* q, uint4* k, const uint4* qin, const uint4* kin, const uint4* v,
                                         const uint4* qn, const uint4* kn, float* qrstd, float* krstd, float eps, float off,
                                         const int* positions, const float* cos_t, const float* sin_t, int max_pos,
                                         uint4* kcache, uint4* vcache, const int* cache_rows, int M, int Hq, int Hkv, int D)
{
    pdl_trigger();
    int warp = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    int heads = Hq + Hkv;
    pdl_wait(); // q/k/v come from the kernel before (nothing here is a constant worth reading early)
    if (warp >= M * heads) return;
    int t = warp / heads, h = warp - t * heads;
    bool isq = h < Hq;
    if (!isq) h -= Hq;
    int c8 = D >> 3;
    int width = (isq ? Hq : Hkv) * c8;
    i64 at = (i64)t * width + (i64)h * c8 + lane;
    const uint4* nw = isq ? qn : kn;
    float x[8], inv;
    head_norm_rope_v8(x, (isq ? qin : kin) + at, nw, eps, off, D, lane, &inv, positions[t], cos_t, sin_t, max_pos);
    if (nw != nullptr && lane == 0) (isq ? qrstd : krstd)[(i64)t * (isq ? Hq : Hkv) + h] = inv;
    if (lane >= c8) return;
    uint4 out = pack8(x);
    (isq ? q : k)[at] = out;
    if (!isq)
    {
        i64 row = (i64)cache_rows[t] * Hkv * c8 + (i64)h * c8 + lane;
        kcache[row] = out;
        vcache[row] = v[at];
    }
}

// ---- decode_layer: a whole one-token decode layer in one persistent launch ----
// CausalLM's fused decode layer (IBackend.DecodeLayer: NormMatMulShared, QkRopeCacheAttention, AttentionOutputMlp)
// as five stages of one cooperative grid (one block an SM), with a grid barrier where each stage reads what the one
// before wrote: (1) ln1 = rmsnorm(x), q/k/v = ln1·W_{q,k,v}ᵀ; (2) q/k norms, RoPE, the new K/V rows and the split-K
// attention over the cache (split_attention, the grid's blocks taking its (range, kv head) items); (3) mid = round(att
// ·W_oᵀ) + x; (4) ln2 = rmsnorm(mid), h = silu(ln2·W_gᵀ)⊙(ln2·W_uᵀ); (5) y = round(h·W_dᵀ) + mid.
// The weights stream without waiting for the stages: every warp knows, from the launch alone, the rows it will use
// in all four products (its columns, strided by the grid, as dec_columns takes them) and reads them through a FIFO of
// P pieces in shared memory (a piece: one batch of a row, 32·DEC_U 16-byte chunks) filled by cp.async, P pieces ahead
// of its arithmetic — also across the grid barriers and the attention, where the previous kernels' warps had nothing in
// flight. A lane copies exactly the chunks it will multiply (chunk q0 + 32u + lane of its piece), so it waits only for
// its own copies (cp.async.wait_group) and no warp synchronises with another over the FIFO. The arithmetic is the
// unfused kernels': each column's chunks in dec_fma's order, warp_sum, the same roundings and stores, so the same bits.
// M = 1 (one token). Dynamic shared memory: K_max bf16 (the stage's input row: normed x or mid, att, h) then
// warps·P pieces.
#define DL_PIECE (32 * DEC_U) // 16-byte chunks of a piece
#define DL_MAX_P 8
#define DL_STAMPS 10 // a trace's points a block (decode_layer_body's stamp)

// One product of a layer as one warp streams it: n columns (col0, col0 + stride, …), each a row of `chunks` 16-byte
// chunks (base + col·chunks; q/k/v's rows come from three weights, DlStream::piece) in B pieces.
struct DlStage
{
    const uint4* base;
    int col0, stride, n, chunks, B;
};

// The rows one warp streams through a layer, stage s ∈ {q/k/v, o, gate or up, down} in turn, and the cursor of the
// next piece to copy (stage is, column ik, piece ib). Scalars selected by stage, never an array indexed at run time:
// that would put the stream in local memory, which with the shared memory this kernel takes has little L1 to live in.
struct DlStream
{
    DlStage s0, s1, s2, s3;
    const uint4 *wk, *wv;
    int nq, nkv;
    int is = 0, ik = 0, ib = 0;

#define DL_SEL(f) (s == 0 ? s0.f : s == 1 ? s1.f : s == 2 ? s2.f : s3.f)
    __device__ void skip_empty()
    {
        for (int s = is; s < 4 && ik >= DL_SEL(n); s = ++is) ik = 0;
    }
    // The cursor's piece: its first chunk, and how many of its chunks the row has left (up to DL_PIECE).
    __device__ const uint4* piece(int& left) const
    {
        int s = is;
        int chunks = DL_SEL(chunks), col = DL_SEL(col0) + ik * DL_SEL(stride);
        const uint4* r = s == 0 ? (col < nq ? s0.base + (i64)col * chunks : col < nq + nkv ? wk + (i64)(col - nq) * chunks : wv + (i64)(col - nq - nkv) * chunks)
                                : DL_SEL(base) + (i64)col * chunks;
        left = chunks - ib * DL_PIECE;
        return r + ib * DL_PIECE;
    }
    __device__ void advance()
    {
        int s = is;
        if (++ib == DL_SEL(B))
        {
            ib = 0;
            ik++;
            skip_empty();
        }
    }
    // This lane's copies of the cursor's piece into slot (DEC_U chunks, lane's at u·32 + lane), the cursor moved on;
    // past the stream an empty group ("P − 1 groups newer than the one consumed" stays true to the end).
    __device__ void issue(uint4* slot, int lane)
    {
        if (is < 4)
        {
            int left;
            const uint4* r = piece(left);
#pragma unroll
            for (int u = 0; u < DEC_U; u++)
                if (u * 32 + lane < left) cp_async16(slot + u * 32 + lane, r + u * 32 + lane, true);
            advance();
        }
        cp_async_commit();
    }
    // The next `pieces` pieces past the cursor into L2 (prefetch_l2: a hint, no value changes), the cursor left as it is.
    __device__ void prefetch(int pieces, int lane) const
    {
        DlStream c = *this;
        for (int i = 0; i < pieces && c.is < 4; i++)
        {
            int left;
            const uint4* r = c.piece(left);
            prefetch_l2(r, (i64)min(left, DL_PIECE) * 16, lane);
            c.advance();
        }
    }
#undef DL_SEL
};

// The FIFO of one warp: consume() hands out the pieces in stream order, each in registers (w) once the lane's copies
// of it have landed; refill() then copies the piece P further on into its slot.
struct DlFifo
{
    DlStream& st;
    uint4* slots; // this warp's P slots of DL_PIECE chunks
    int P, lane, slot = 0;

    __device__ void start()
    {
        st.skip_empty();
        for (int i = 0; i < P; i++) st.issue(slots + i * DL_PIECE, lane);
    }
    // The next piece's chunks q0 + 32u + lane (those below chunks) into w.
    __device__ void consume(uint4 (&w)[DEC_U], int q0, int chunks)
    {
        cp_async_wait_n(P - 1);
        const uint4* from = slots + slot * DL_PIECE;
#pragma unroll
        for (int u = 0; u < DEC_U; u++) w[u] = q0 + u * 32 + lane < chunks ? from[u * 32 + lane] : make_uint4(0u, 0u, 0u, 0u);
    }
    // After w's arithmetic (so the slot's loads have completed): the slot refilled, the FIFO moved on.
    __device__ void refill()
    {
        asm volatile("" ::: "memory"); // the slot's loads stay before the copies that overwrite it
        st.issue(slots + slot * DL_PIECE, lane);
        slot = slot + 1 == P ? 0 : slot + 1;
    }
};

// One stage's product for this warp: its n columns, each its pieces through the FIFO into dec_fma, then done(col, s).
template <class Done>
__device__ __forceinline__ void dl_product(DlFifo& fifo, const DlStage& stage, const uint4* a, int lane, Done done)
{
    int chunks = stage.chunks;
    for (int k = 0; k < stage.n; k++)
    {
        float acc[DEC_MAX_M] = {};
        for (int q0 = 0; q0 < chunks; q0 += DL_PIECE)
        {
            uint4 w[DEC_U];
            fifo.consume(w, q0, chunks);
            dec_fma(acc, w, a, 1, q0, chunks, lane);
            fifo.refill();
        }
        done(stage.col0 + k * stage.stride, warp_sum(acc[0]));
    }
}

__device__ __forceinline__ void decode_layer_body(
    const uint4* x, const uint4* nw1, float eps, uint4* ln1, float* rstd1, int H, unsigned short* qkv0, unsigned short* qkv1, unsigned short* qkv2,
    const uint4* wq, const uint4* wk, const uint4* wv, float* part, uint4* kcache, uint4* vcache, const int* seqs, const int* positions,
    const int* tables, int bs, int W, int Hq, int Hkv, int D, float scale, int window, float softcap, unsigned short* att, unsigned* counters,
    const uint4* qn, const uint4* kn, float* qrstd, float* krstd, const float* cos_t, const float* sin_t, int max_pos, uint4* qout, uint4* kout,
    const int* cache_rows, int splits, unsigned short* mid, const uint4* wo, const uint4* nw2, uint4* ln2, float* rstd2, int I,
    const uint4* wg, const uint4* wu, unsigned short* gate, unsigned short* up, unsigned short* h, unsigned short* y, const uint4* wd,
    unsigned* bar, uint4* xs, uint4* fifo_smem, int P, int ahead, unsigned long long* trace)
{
    __shared__ unsigned short sums[2][DEC_PAIRS][2];
    pdl_trigger();
    // With a trace buffer (DeviceChecks only): the block's globaltimer at DL_STAMPS points — entry, then each stage's
    // end (its last warp done) and each barrier's release — so a check can say where a layer's time goes.
    auto stamp = [trace](int k, bool whole)
    {
        if (trace == nullptr) return;
        if (whole) __syncthreads();
        if (threadIdx.x == 0) trace[blockIdx.x * DL_STAMPS + k] = globaltimer_ns();
    };
    stamp(0, false);
    int warps = blockDim.x >> 5, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    int G = gridDim.x * warps, n = blockIdx.x * warps + warp;
    int pair = warp >> 1, half = warp & 1, Gp = gridDim.x * (warps >> 1), np = blockIdx.x * (warps >> 1) + pair;
    int nq = Hq * D, nkv = Hkv * D, Ka = nq;
    DlStream st;
    auto stage = [&](const uint4* base, int c0, int g, int cols, int k) { return DlStage{base, c0, g, c0 < cols ? (cols - 1 - c0) / g + 1 : 0, k >> 3, ((k >> 3) + DL_PIECE - 1) / DL_PIECE}; };
    st.s0 = stage(wq, n, G, nq + 2 * nkv, H);
    st.s1 = stage(wo, n, G, H, Ka);
    st.s2 = stage(half == 0 ? wg : wu, np, Gp, I, H);
    st.s3 = stage(wd, n, G, H, I);
    st.wk = wk; st.wv = wv; st.nq = nq; st.nkv = nkv;
    DlFifo fifo{st, fifo_smem + (i64)warp * P * DL_PIECE, P, lane};
    fifo.start();
    pdl_wait(); // x comes from the kernel before
    auto barrier = [bar] { grid_barrier(bar); };

    // (1) ln1, q/k/v (gemv_norm_set's arithmetic and stores).
    dec_norm_rows(xs, x, nw1, 1, H, eps, 0.0f, ln1, rstd1);
    dl_product(fifo, st.s0, xs, lane, [&](int col, float s)
    {
        if (lane != 0) return;
        if (col < nq) qkv0[col] = f32_to_bf16(s);
        else if (col < nq + nkv) qkv1[col - nq] = f32_to_bf16(s);
        else qkv2[col - nq - nkv] = f32_to_bf16(s);
    });
    stamp(1, true);
    st.prefetch(ahead, lane); // the attention stalls the FIFO: the rows after it go to L2 meanwhile
    for (int item = blockIdx.x; item < splits * Hkv; item += gridDim.x)
        split_prefetch(kcache, vcache, seqs, positions, tables, bs, W, Hkv, D, window, item / Hkv, splits, item % Hkv, 0);
    barrier();
    stamp(2, false);

    // (2) q/k norms, RoPE, the new K/V rows, split-K attention (cached_attention_rope_split's blocks, as work items).
    SplitRope r = {(const uint4*)qkv0, (const uint4*)qkv1, (const uint4*)qkv2, qn, kn, qrstd, krstd, eps, 0.0f, cos_t, sin_t, max_pos,
                   qout, kout, kcache, vcache, cache_rows};
    for (int item = blockIdx.x; item < splits * Hkv; item += gridDim.x)
        split_attention(part, nullptr, FT_BF16, kcache, FT_BF16, vcache, FT_BF16, seqs, positions, tables, bs, W, Hq, Hkv, D, scale, window,
                        softcap, att, FT_BF16, counters, r, item / Hkv, splits, item % Hkv, 0);
    stamp(3, true);
    barrier();
    stamp(4, false);

    // (3) mid = round(att·W_oᵀ) + x (gemv_residual's).
    block_stage(xs, (const uint4*)att, Ka >> 3);
    dl_product(fifo, st.s1, xs, lane, [&](int col, float s)
    {
        if (lane == 0) mid[col] = dec_residual(s, ((const unsigned short*)x)[col]);
    });
    stamp(5, true);
    barrier();
    stamp(6, false);

    // (4) ln2, gate/up by warp pairs, h (gemv_norm_swiglu's).
    dec_norm_rows(xs, (const uint4*)mid, nw2, 1, H, eps, 0.0f, ln2, rstd2);
    int parity = 0;
    dl_product(fifo, st.s2, xs, lane, [&](int col, float s)
    {
        if (lane == 0)
        {
            unsigned short v = f32_to_bf16(s);
            (half == 0 ? gate : up)[col] = v;
            sums[parity][pair][half] = v;
        }
        asm volatile("bar.sync %0, 64;" ::"r"(1 + pair) : "memory");
        if (half == 0 && lane == 0)
        {
            float gv = bf16_to_f32(sums[parity][pair][0]), uv = bf16_to_f32(sums[parity][pair][1]);
            h[col] = dec_swiglu(gv, uv);
        }
        parity ^= 1;
    });
    stamp(7, true);
    barrier();
    stamp(8, false);

    // (5) y = round(h·W_dᵀ) + mid.
    block_stage(xs, (const uint4*)h, I >> 3);
    dl_product(fifo, st.s3, xs, lane, [&](int col, float s)
    {
        if (lane == 0) y[col] = dec_residual(s, mid[col]);
    });
    cp_async_wait<0>(); // nothing left in flight (the stream's tail is empty groups)
    stamp(9, true);
}

#define DECODE_LAYER_PARAMS (const uint4* x, const uint4* nw1, float eps, uint4* ln1, float* rstd1, int H, unsigned short* qkv0, unsigned short* qkv1, \
    unsigned short* qkv2, const uint4* wq, const uint4* wk, const uint4* wv, float* part, uint4* kcache, uint4* vcache, const int* seqs, const int* positions, \
    const int* tables, int bs, int W, int Hq, int Hkv, int D, float scale, int window, float softcap, unsigned short* att, unsigned* counters, \
    const uint4* qn, const uint4* kn, float* qrstd, float* krstd, const float* cos_t, const float* sin_t, int max_pos, uint4* qout, uint4* kout, \
    const int* cache_rows, int splits, unsigned short* mid, const uint4* wo, const uint4* nw2, uint4* ln2, float* rstd2, int I, \
    const uint4* wg, const uint4* wu, unsigned short* gate, unsigned short* up, unsigned short* h, unsigned short* y, const uint4* wd, \
    unsigned* bar, int P, int ahead, unsigned long long* trace)

// Launched cooperatively, one block an SM, an even number of warps (at least max(G, 4): split_attention's), P the
// FIFO's depth (2 … DL_MAX_P: CudaBackend.PersistentLayerDepth, from the shared memory left), ahead the pieces a warp
// prefetches into L2 past its FIFO before the attention (CudaBackend.PersistentLayerShape). Dynamic shared memory:
// K_max bf16 + warps·P·DL_PIECE·16 bytes.
extern "C" __global__ void decode_layer DECODE_LAYER_PARAMS
{
    extern __shared__ uint4 dyn[];
    int kmax = max(max(H, Hq * D), I);
    uint4* xs = dyn;
    uint4* fifo = dyn + ((kmax >> 3) + 7) / 8 * 8; // slots 128-byte aligned
    decode_layer_body(x, nw1, eps, ln1, rstd1, H, qkv0, qkv1, qkv2, wq, wk, wv, part, kcache, vcache, seqs, positions, tables, bs, W, Hq, Hkv, D,
                      scale, window, softcap, att, counters, qn, kn, qrstd, krstd, cos_t, sin_t, max_pos, qout, kout, cache_rows, splits, mid, wo,
                      nw2, ln2, rstd2, I, wg, wu, gate, up, h, y, wd, bar, xs, fifo, min(max(P, 1), DL_MAX_P), ahead, trace);
}
