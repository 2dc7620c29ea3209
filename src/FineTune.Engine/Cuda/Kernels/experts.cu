// Mixture of experts: the router (softmax in fp32, top-k with ties to the lower index, optional renormalisation) and
// its backward, the load-balancing statistics, the stable sort of the (token, slot) choices by expert, the grouped
// products (one launch per projection over every expert's rows; the expert of a tile is found from the offsets on the
// device, so no host round trip), and the weighted combine with its backward. CPU reference: CpuBackend.Experts.cs.
#include "common.cuh"

// One warp per token; p in shared memory (e floats per warp).
// p = softmax(logits); for s < k: idx_s = argmax over untaken p (lowest index on ties), w_s = p[idx_s]; w /= Σw if normalize.
extern "C" __global__ void moe_route(const void* logits, int dt_l, float* probs, int* top_idx, float* top_w, int n, int e, int k, int normalize)
{
    extern __shared__ float sh[];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    int t = blockIdx.x * warps + warp;
    if (t >= n) return;
    float* p = sh + (i64)warp * e;
    float mx = -INFINITY;
    for (int j = lane; j < e; j += 32) { p[j] = ld(logits, (i64)t * e + j, dt_l); mx = fmaxf(mx, p[j]); }
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int j = lane; j < e; j += 32) { p[j] = expf(p[j] - mx); sum += p[j]; }
    sum = warp_sum(sum);
    for (int j = lane; j < e; j += 32) { p[j] = p[j] / sum; probs[(i64)t * e + j] = p[j]; }
    __syncwarp();
    float chosen = 0.0f;
    for (int s = 0; s < k; s++)
    {
        float best = -1.0f; int bi = 0x7fffffff;
        for (int j = lane; j < e; j += 32)
            if (p[j] > best) { best = p[j]; bi = j; }
        for (int o = 16; o > 0; o >>= 1)
        {
            float ob = __shfl_xor_sync(FULL_MASK, best, o);
            int oi = __shfl_xor_sync(FULL_MASK, bi, o);
            if (ob > best || (ob == best && oi < bi)) { best = ob; bi = oi; }
        }
        if (lane == 0) { top_idx[(i64)t * k + s] = bi; top_w[(i64)t * k + s] = best; p[bi] = -1.0f; }
        chosen += best;
        __syncwarp();
    }
    if (normalize) for (int s = lane; s < k; s += 32) top_w[(i64)t * k + s] /= chosen;
}

// One warp per token; dp in shared memory. dp = auxScale·auxGrad[e]·mask[t] (when given), dp[idx_s] += (normalize ?
// (dw_s − Σ dw·w)/S : dw_s), dlogits = p ⊙ (dp − Σ p·dp).
extern "C" __global__ void moe_route_backward(void* dlogits, int dt_d, const float* dtop_w, const float* probs, const int* top_idx,
                                              const float* top_w, const float* aux_grad, const float* mask, float aux_scale,
                                              int n, int e, int k, int normalize)
{
    extern __shared__ float sh[];
    int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    int t = blockIdx.x * warps + warp;
    if (t >= n) return;
    float* d = sh + (i64)warp * e;
    const float* p = probs + (i64)t * e;
    float aux = aux_grad ? aux_scale * (mask ? mask[t] : 1.0f) : 0.0f;
    for (int j = lane; j < e; j += 32) d[j] = aux_grad ? aux * aux_grad[j] : 0.0f;
    __syncwarp();
    if (lane == 0)
    {
        float chosen = 0.0f, dot = 0.0f;
        for (int s = 0; s < k; s++) { chosen += p[top_idx[(i64)t * k + s]]; dot += dtop_w[(i64)t * k + s] * top_w[(i64)t * k + s]; }
        for (int s = 0; s < k; s++)
        {
            float g = dtop_w[(i64)t * k + s];
            d[top_idx[(i64)t * k + s]] += normalize ? (g - dot) / chosen : g;
        }
    }
    __syncwarp();
    float pdp = 0.0f;
    for (int j = lane; j < e; j += 32) pdp += p[j] * d[j];
    pdp = warp_sum(pdp);
    for (int j = lane; j < e; j += 32) st(dlogits, (i64)t * e + j, p[j] * (d[j] - pdp), dt_d);
}

// One thread per expert, tokens in order (deterministic sums): counts[x] += Σ mask·[x chosen], prob_sums[x] += Σ mask·p.
extern "C" __global__ void moe_router_stats(float* counts, float* prob_sums, const float* probs, const int* top_idx, const float* mask, int n, int e, int k)
{
    int x = blockIdx.x * blockDim.x + threadIdx.x;
    if (x >= e) return;
    float c = 0.0f, s = 0.0f;
    for (int t = 0; t < n; t++)
    {
        float m = mask[t];
        for (int j = 0; j < k; j++) if (top_idx[(i64)t * k + j] == x) c += m;
        s += m * probs[(i64)t * e + x];
    }
    counts[x] += c;
    prob_sums[x] += s;
}

// One block per expert: offsets[x + 1] = number of choices of expert x.
extern "C" __global__ void moe_count(const int* top_idx, int* offsets, int choices)
{
    int x = blockIdx.x;
    float c = 0.0f;
    for (int i = threadIdx.x; i < choices; i += blockDim.x) c += top_idx[i] == x ? 1.0f : 0.0f;
    c = block_sum(c);
    if (threadIdx.x == 0) offsets[x + 1] = (int)c;
}

// One thread: offsets[0] = 0 and the running sum of the counts.
extern "C" __global__ void moe_scan(int* offsets, int e)
{
    if (blockIdx.x != 0 || threadIdx.x != 0) return;
    offsets[0] = 0;
    for (int x = 0; x < e; x++) offsets[x + 1] += offsets[x];
}

// One block per expert: its choices in order get rows offsets[x], offsets[x] + 1, … (a block-wide scan of the matches).
extern "C" __global__ void moe_place(const int* top_idx, const int* offsets, int* sorted_token, int* row_of, int choices, int k)
{
    __shared__ int warp_totals[32];
    __shared__ int base;
    int x = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (threadIdx.x == 0) base = offsets[x];
    __syncthreads();
    for (int i0 = 0; i0 < choices; i0 += blockDim.x)
    {
        int i = i0 + threadIdx.x;
        bool hit = i < choices && top_idx[i] == x;
        unsigned ballot = __ballot_sync(FULL_MASK, hit);
        if (lane == 0) warp_totals[warp] = __popc(ballot);
        __syncthreads();
        int before = 0, total = 0;
        for (int w = 0; w < warps; w++) { if (w < warp) before += warp_totals[w]; total += warp_totals[w]; }
        if (hit)
        {
            int row = base + before + __popc(ballot & ((1u << lane) - 1u));
            sorted_token[row] = i / k;
            row_of[i] = row;
        }
        __syncthreads();
        if (threadIdx.x == 0) base += total;
        __syncthreads();
    }
}

#define GT 64   // tile rows and columns
#define GK 16   // reduction step

// The expert and first row of tile `tile` when each expert's rows [offsets[x], offsets[x+1]) are cut into GT-row tiles
// in expert order; expert −1 past the last tile.
__device__ __forceinline__ void tile_of(const int* offsets, int e, int tile, int* expert, int* row0, int* row_end)
{
    int seen = 0;
    *expert = -1;
    for (int x = 0; x < e; x++)
    {
        int r0 = offsets[x], r1 = offsets[x + 1], tiles = (r1 - r0 + GT - 1) / GT;
        if (tile < seen + tiles) { *expert = x; *row0 = r0 + (tile - seen) * GT; *row_end = r1; return; }
        seen += tiles;
    }
}

// c[p, :] (+)= a[p, :]·op(w_x) for the rows p of expert x: op(w_x) = w_xᵀ (w_x [N, K]) when trans_w, else w_x ([K, N]).
// grid (ceil(N/GT), number of row tiles (ceil(rows/GT) + E bounds it)), 256 threads, 4×4 outputs each, fp32 accumulation.
extern "C" __global__ void grouped_gemm(void* c, int dt_c, const void* a, int dt_a, const void* w, int dt_w, const int* offsets,
                                        int e, int n_out, int k_in, int trans_w, int accumulate)
{
    __shared__ float as[GK][GT + 1];
    __shared__ float bs[GK][GT + 1];
    int expert = -1, row0 = 0, row_end = 0;
    tile_of(offsets, e, blockIdx.y, &expert, &row0, &row_end);
    if (expert < 0) return;
    int col0 = blockIdx.x * GT;
    int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    const i64 wbase = (i64)expert * n_out * k_in;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < k_in; k0 += GK)
    {
        for (int idx = threadIdx.x; idx < GK * GT; idx += blockDim.x)
        {
            int kk = idx % GK, r = idx / GK;
            int row = row0 + r, kg = k0 + kk;
            as[kk][r] = (row < row_end && kg < k_in) ? ld(a, (i64)row * k_in + kg, dt_a) : 0.0f;
            int col = col0 + r;
            float bv = 0.0f;
            if (col < n_out && kg < k_in) bv = trans_w ? ld(w, wbase + (i64)col * k_in + kg, dt_w) : ld(w, wbase + (i64)kg * n_out + col, dt_w);
            bs[kk][r] = bv;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < GK; kk++)
        {
            float av[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; i++) { av[i] = as[kk][ty * 4 + i]; bv[i] = bs[kk][tx * 4 + i]; }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] += av[i] * bv[j];
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; i++)
    {
        int row = row0 + ty * 4 + i;
        if (row >= row_end) continue;
#pragma unroll
        for (int j = 0; j < 4; j++)
        {
            int col = col0 + tx * 4 + j;
            if (col >= n_out) continue;
            i64 o = (i64)row * n_out + col;
            st(c, o, accumulate ? ld(c, o, dt_c) + acc[i][j] : acc[i][j], dt_c);
        }
    }
}

// dw_x[n, k] += Σ_{p ∈ rows of x} dc[p, n]·a[p, k]; grid (ceil(K/GT), ceil(N/GT), E), 256 threads, 4×4 outputs each.
extern "C" __global__ void grouped_gemm_weight_grad(float* dw, const void* dc, int dt_dc, const void* a, int dt_a, const int* offsets,
                                                    int n_out, int k_in)
{
    __shared__ float ds[GK][GT + 1];
    __shared__ float as[GK][GT + 1];
    int expert = blockIdx.z;
    int r0 = offsets[expert], r1 = offsets[expert + 1];
    if (r1 <= r0) return;
    int n0 = blockIdx.y * GT, k0 = blockIdx.x * GT;
    int tx = threadIdx.x & 15, ty = threadIdx.x >> 4;
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; i++)
#pragma unroll
        for (int j = 0; j < 4; j++) acc[i][j] = 0.0f;
    for (int p0 = r0; p0 < r1; p0 += GK)
    {
        for (int idx = threadIdx.x; idx < GK * GT; idx += blockDim.x)
        {
            int pp = idx / GT, col = idx % GT, p = p0 + pp;
            ds[pp][col] = (p < r1 && n0 + col < n_out) ? ld(dc, (i64)p * n_out + n0 + col, dt_dc) : 0.0f;
            as[pp][col] = (p < r1 && k0 + col < k_in) ? ld(a, (i64)p * k_in + k0 + col, dt_a) : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int pp = 0; pp < GK; pp++)
        {
            float dv[4], av[4];
#pragma unroll
            for (int i = 0; i < 4; i++) { dv[i] = ds[pp][ty * 4 + i]; av[i] = as[pp][tx * 4 + i]; }
#pragma unroll
            for (int i = 0; i < 4; i++)
#pragma unroll
                for (int j = 0; j < 4; j++) acc[i][j] += dv[i] * av[j];
        }
        __syncthreads();
    }
    i64 wbase = (i64)expert * n_out * k_in;
#pragma unroll
    for (int i = 0; i < 4; i++)
    {
        int nn = n0 + ty * 4 + i;
        if (nn >= n_out) continue;
#pragma unroll
        for (int j = 0; j < 4; j++)
        {
            int kk = k0 + tx * 4 + j;
            if (kk < k_in) dw[wbase + (i64)nn * k_in + kk] += acc[i][j];
        }
    }
}

// y[t, c] = Σ_j w[t, j]·rows[row_of[t·k + j], c], slots in order.
extern "C" __global__ void moe_combine(void* y, int dt_y, const void* rows, int dt_r, const float* top_w, const int* row_of, int n, int cols, int k)
{
    GRID_STRIDE(i, (i64)n * cols)
    {
        i64 t = i / cols;
        int c = (int)(i - t * cols);
        float s = 0.0f;
        for (int j = 0; j < k; j++) s += top_w[t * k + j] * ld(rows, (i64)row_of[t * k + j] * cols + c, dt_r);
        st(y, i, s, dt_y);
    }
}

// drows[row_of[t·k + j], c] = w[t, j]·dy[t, c].
extern "C" __global__ void moe_combine_backward_rows(void* drows, int dt_dr, const void* dy, int dt_dy, const float* top_w, const int* row_of, int n, int cols, int k)
{
    GRID_STRIDE(i, (i64)n * k * cols)
    {
        i64 choice = i / cols;
        int c = (int)(i - choice * cols);
        i64 t = choice / k;
        st(drows, (i64)row_of[choice] * cols + c, top_w[choice] * ld(dy, t * cols + c, dt_dy), dt_dr);
    }
}

// One block per choice: dtop_w[t·k + j] = dy[t]·rows[row_of[t·k + j]].
extern "C" __global__ void moe_combine_backward_weights(float* dtop_w, const void* dy, int dt_dy, const void* rows, int dt_r, const int* row_of, int cols, int k)
{
    i64 choice = blockIdx.x, t = choice / k, r = row_of[choice];
    float s = 0.0f;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) s += ld(dy, t * cols + c, dt_dy) * ld(rows, r * cols + c, dt_r);
    s = block_sum(s);
    if (threadIdx.x == 0) dtop_w[choice] = s;
}

// dx[t, c] = Σ_j drows[row_of[t·k + j], c].
extern "C" __global__ void moe_gather_backward(void* dx, int dt_dx, const void* drows, int dt_dr, const int* row_of, int n, int cols, int k)
{
    GRID_STRIDE(i, (i64)n * cols)
    {
        i64 t = i / cols;
        int c = (int)(i - t * cols);
        float s = 0.0f;
        for (int j = 0; j < k; j++) s += ld(drows, (i64)row_of[t * k + j] * cols + c, dt_dr);
        st(dx, i, s, dt_dx);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Tensor-core grouped products (BF16 operands, fp32 accumulation; mma.sync m16n8k16 as flash_attention.cu uses it,
// fragment layouts described there). A block computes a 64×64 tile of one expert with 4 warps of 32×32; operands are
// staged in shared memory as bf16 (zero-filled past the ends), fragments read with ldmatrix.
// ---------------------------------------------------------------------------------------------------------
typedef unsigned short bf16_t;

__device__ __forceinline__ void tc_mma16816(float* c, const unsigned* a, unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ unsigned tc_smem(const void* p)
{
    unsigned long long s;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(s) : "l"(p));
    return (unsigned)s;
}

__device__ __forceinline__ void tc_ldsm_x4(unsigned* r, const bf16_t* p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(tc_smem(p)));
}

__device__ __forceinline__ void tc_ldsm_x4_trans(unsigned* r, const bf16_t* p)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(tc_smem(p)));
}

#define TC_K 32          // reduction step
#define TC_AS 40         // row stride (bf16) of [row][k] tiles: 80 bytes, keeps ldmatrix rows 16-byte aligned
#define TC_BS 72         // row stride of [k][n] tiles

// The 64×64 tile's 4 warps: warp w covers rows (w/2)·32 … +32 and columns (w%2)·32 … +32 as 2×4 m16n8 accumulators.
// A is As[row][k] (stride TC_AS); B is Bs[n][k] (stride TC_AS) when b_nk, else Bs[k][n] (stride TC_BS).
__device__ __forceinline__ void tc_tile_products(float acc[2][4][4], const bf16_t* As, const bf16_t* Bs, bool b_nk, int warp, int lane)
{
    int wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
#pragma unroll
    for (int kk = 0; kk < TC_K; kk += 16)
    {
        unsigned a[2][4];
#pragma unroll
        for (int i = 0; i < 2; i++)
            tc_ldsm_x4(a[i], As + (wm + 16 * i + (lane & 7) + ((lane >> 3) & 1) * 8) * TC_AS + kk + (lane >> 4) * 8);
#pragma unroll
        for (int j = 0; j < 2; j++)
        {
            unsigned b[4];
            int n0 = wn + 16 * j;
            if (b_nk) tc_ldsm_x4(b, Bs + (n0 + (lane & 7) + (lane >> 4) * 8) * TC_AS + kk + ((lane >> 3) & 1) * 8);
            else tc_ldsm_x4_trans(b, Bs + (kk + (lane & 7) + ((lane >> 3) & 1) * 8) * TC_BS + n0 + (lane >> 4) * 8);
#pragma unroll
            for (int i = 0; i < 2; i++)
            {
                tc_mma16816(acc[i][2 * j], a[i], b[0], b[1]);
                tc_mma16816(acc[i][2 * j + 1], a[i], b[2], b[3]);
            }
        }
    }
}

// grouped_gemm on tensor cores: a, w bf16; c bf16 or f32 (written or accumulated). Same grid as grouped_gemm with
// 128 threads.
extern "C" __global__ void grouped_gemm_tc(void* c, int dt_c, const bf16_t* a, const bf16_t* w, const int* offsets,
                                           int e, int n_out, int k_in, int trans_w, int accumulate)
{
    __shared__ __align__(16) bf16_t As[GT * TC_AS];
    __shared__ __align__(16) bf16_t Bs[GT * TC_BS];
    int expert = -1, row0 = 0, row_end = 0;
    tile_of(offsets, e, blockIdx.y, &expert, &row0, &row_end);
    if (expert < 0) return;
    int col0 = blockIdx.x * GT, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    const bf16_t* we = w + (i64)expert * n_out * k_in;
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[i][j][q] = 0.0f;
    for (int k0 = 0; k0 < k_in; k0 += TC_K)
    {
        for (int idx = threadIdx.x; idx < GT * TC_K; idx += blockDim.x)
        {
            int r = idx / TC_K, kk = idx % TC_K, row = row0 + r, kg = k0 + kk;
            As[r * TC_AS + kk] = (row < row_end && kg < k_in) ? a[(i64)row * k_in + kg] : (bf16_t)0;
            if (trans_w)
            {
                int col = col0 + r; // Bs[n][k] = w_e[n, k]
                Bs[r * TC_AS + kk] = (col < n_out && kg < k_in) ? we[(i64)col * k_in + kg] : (bf16_t)0;
            }
            else
            {
                int kr = idx / GT, n = idx % GT, kg2 = k0 + kr, col = col0 + n; // Bs[k][n] = w_e[k, n]
                Bs[kr * TC_BS + n] = (kg2 < k_in && col < n_out) ? we[(i64)kg2 * n_out + col] : (bf16_t)0;
            }
        }
        __syncthreads();
        tc_tile_products(acc, As, Bs, trans_w != 0, warp, lane);
        __syncthreads();
    }
    int wm = (warp >> 1) * 32, wn = (warp & 1) * 32, g = lane >> 2, t = lane & 3;
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int q = 0; q < 4; q++)
            {
                int row = row0 + wm + 16 * i + g + (q >> 1) * 8, col = col0 + wn + 8 * j + 2 * t + (q & 1);
                if (row >= row_end || col >= n_out) continue;
                i64 o = (i64)row * n_out + col;
                st(c, o, accumulate ? ld(c, o, dt_c) + acc[i][j][q] : acc[i][j][q], dt_c);
            }
}

// grouped_gemm_weight_grad on tensor cores: dw_x[n, k] += Σ_p dc[p, n]·a[p, k] with dc, a bf16 and dw f32.
// A = dc_xᵀ staged As[n][p]; B = a_x staged Bs[p][k]. Grid (ceil(K/64), ceil(N/64), E), 128 threads.
extern "C" __global__ void grouped_gemm_weight_grad_tc(float* dw, const bf16_t* dc, const bf16_t* a, const int* offsets, int n_out, int k_in)
{
    __shared__ __align__(16) bf16_t As[GT * TC_AS];
    __shared__ __align__(16) bf16_t Bs[GT * TC_BS];
    int expert = blockIdx.z;
    int r0 = offsets[expert], r1 = offsets[expert + 1];
    if (r1 <= r0) return;
    int n0 = blockIdx.y * GT, k0 = blockIdx.x * GT, warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
    float acc[2][4][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[i][j][q] = 0.0f;
    for (int p0 = r0; p0 < r1; p0 += TC_K)
    {
        for (int idx = threadIdx.x; idx < GT * TC_K; idx += blockDim.x)
        {
            int pp = idx / GT, col = idx % GT, p = p0 + pp;
            As[col * TC_AS + pp] = (p < r1 && n0 + col < n_out) ? dc[(i64)p * n_out + n0 + col] : (bf16_t)0;
            Bs[pp * TC_BS + col] = (p < r1 && k0 + col < k_in) ? a[(i64)p * k_in + k0 + col] : (bf16_t)0;
        }
        __syncthreads();
        tc_tile_products(acc, As, Bs, false, warp, lane);
        __syncthreads();
    }
    int wm = (warp >> 1) * 32, wn = (warp & 1) * 32, g = lane >> 2, t = lane & 3;
    i64 base = (i64)expert * n_out * k_in;
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 4; j++)
#pragma unroll
            for (int q = 0; q < 4; q++)
            {
                int nn = n0 + wm + 16 * i + g + (q >> 1) * 8, kk = k0 + wn + 8 * j + 2 * t + (q & 1);
                if (nn < n_out && kk < k_in) dw[base + (i64)nn * k_in + kk] += acc[i][j][q];
            }
}
