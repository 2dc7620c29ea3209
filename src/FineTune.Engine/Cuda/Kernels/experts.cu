// Mixture of experts: the router (softmax in fp32, top-k with ties to the lower index, optional renormalisation) and
// its backward, the load-balancing statistics, the stable sort of the (token, slot) choices by expert, the grouped
// products (one launch per projection over every expert's rows; the expert of a tile is found from the offsets on the
// device, so no host round trip), and the weighted combine with its backward. CPU reference: CpuBackend.Experts.cs.
#include "mma.cuh"

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

#define PLACE_RUN 4 // consecutive choices per thread and pass of moe_place

// One block per expert: its choices in order get rows offsets[x], offsets[x] + 1, … Each pass covers blockDim·PLACE_RUN
// choices, thread t the run t·PLACE_RUN …: its matches' rank is the block-wide exclusive scan of the runs' counts
// (a warp scan by shuffles, then the warps' totals), so the order is the choices' order, as one thread per choice had it.
extern "C" __global__ void moe_place(const int* top_idx, const int* offsets, int* sorted_token, int* row_of, int choices, int k)
{
    __shared__ int warp_totals[32];
    __shared__ int base;
    int x = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (threadIdx.x == 0) base = offsets[x];
    __syncthreads();
    for (int i0 = 0; i0 < choices; i0 += blockDim.x * PLACE_RUN)
    {
        int i = i0 + threadIdx.x * PLACE_RUN;
        bool hit[PLACE_RUN];
        int count = 0;
#pragma unroll
        for (int q = 0; q < PLACE_RUN; q++) { hit[q] = i + q < choices && top_idx[i + q] == x; count += hit[q] ? 1 : 0; }
        int incl = count; // inclusive scan over the warp's lanes
#pragma unroll
        for (int o = 1; o < 32; o <<= 1)
        {
            int v = __shfl_up_sync(FULL_MASK, incl, o);
            if (lane >= o) incl += v;
        }
        if (lane == 31) warp_totals[warp] = incl;
        __syncthreads();
        int before = 0, total = 0;
        for (int w = 0; w < warps; w++) { if (w < warp) before += warp_totals[w]; total += warp_totals[w]; }
        int row = base + before + incl - count;
#pragma unroll
        for (int q = 0; q < PLACE_RUN; q++)
            if (hit[q]) { sorted_token[row] = (i + q) / k; row_of[i + q] = row; row++; }
        __syncthreads();
        if (threadIdx.x == 0) base += total;
        __syncthreads();
    }
}

#define GT 64   // tile rows and columns
#define GK 16   // reduction step

// The expert and first row of tile `tile` when each expert's rows [offsets[x], offsets[x+1]) are cut into
// tile_rows-row tiles in expert order; expert −1 past the last tile.
__device__ __forceinline__ void tile_of(const int* offsets, int e, int tile, int tile_rows, int* expert, int* row0, int* row_end)
{
    int seen = 0;
    *expert = -1;
    for (int x = 0; x < e; x++)
    {
        int r0 = offsets[x], r1 = offsets[x + 1], tiles = (r1 - r0 + tile_rows - 1) / tile_rows;
        if (tile < seen + tiles) { *expert = x; *row0 = r0 + (tile - seen) * tile_rows; *row_end = r1; return; }
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
    tile_of(offsets, e, blockIdx.y, GT, &expert, &row0, &row_end);
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

// dact[row_of[i], :] = w[i]·h[row_of[i], :] and dtop_w[i] = h[row_of[i]]·act[row_of[i]], one block per choice i = t·k + j:
// the combine's backward carried through the down product (h = dy[t]·W_down of the choice's expert, on the unscaled
// gathered dy rows), so the expert outputs rows = act·W_downᵀ need not exist: dy[t]·rows[r] = (dy[t]·W_down)·act[r].
extern "C" __global__ void moe_combine_down_backward(void* dact, int dt_da, float* dtop_w, const void* h, int dt_h, const void* act, int dt_a,
                                                     const float* top_w, const int* row_of, int inter)
{
    i64 choice = blockIdx.x, r = row_of[choice];
    float w = top_w[choice], s = 0.0f;
    for (int c = threadIdx.x; c < inter; c += blockDim.x)
    {
        float hv = ld(h, r * inter + c, dt_h);
        s += hv * ld(act, r * inter + c, dt_a);
        st(dact, r * inter + c, w * hv, dt_da);
    }
    s = block_sum(s);
    if (threadIdx.x == 0) dtop_w[choice] = s;
}

// The row kernels above with every row tensor BF16, cols % 8 == 0 and 16-byte aligned (cols8 = cols / 8): one warp per
// token (or per choice), 16 bytes per load and store. Each output element's arithmetic is the scalar kernel's, in the
// same order, so moe_combine_v8, moe_combine_backward_rows' half of moe_combine_backward_v8 and moe_gather_backward_v8
// give its bits; the dot products (dtop_w) sum lane partials and then a warp tree, so their last bits differ from the
// block-wide sums of moe_combine_backward_weights / moe_combine_down_backward.

// y[t, :] = Σ_j w[t, j]·rows[row_of[t·k + j], :], slots in order.
extern "C" __global__ void moe_combine_v8(uint4* y, const uint4* rows, const float* top_w, const int* row_of, int n, int cols8, int k)
{
    int t = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (t >= n) return;
    for (int c = threadIdx.x & 31; c < cols8; c += 32)
    {
        float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        for (int j = 0; j < k; j++)
        {
            float w = top_w[(i64)t * k + j], v[8];
            unpack8(rows[(i64)row_of[(i64)t * k + j] * cols8 + c], v);
#pragma unroll
            for (int i = 0; i < 8; i++) s[i] += w * v[i];
        }
        y[(i64)t * cols8 + c] = pack8(s);
    }
}

// One warp per choice i = t·k + j: drows[row_of[i], :] = w[i]·dy[t, :] and dtop_w[i] = dy[t]·rows[row_of[i]] in one pass.
extern "C" __global__ void moe_combine_backward_v8(uint4* drows, float* dtop_w, const uint4* dy, const uint4* rows, const float* top_w,
                                                   const int* row_of, int choices, int cols8, int k)
{
    int choice = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (choice >= choices) return;
    i64 t = choice / k, r = row_of[choice];
    float w = top_w[choice], s = 0.0f;
    for (int c = lane; c < cols8; c += 32)
    {
        float g[8], v[8], d[8];
        unpack8(dy[t * cols8 + c], g);
        unpack8(rows[r * cols8 + c], v);
#pragma unroll
        for (int i = 0; i < 8; i++) { d[i] = w * g[i]; s += g[i] * v[i]; }
        drows[r * cols8 + c] = pack8(d);
    }
    s = warp_sum(s);
    if (lane == 0) dtop_w[choice] = s;
}

// One warp per choice: dact[row_of[i], :] = w[i]·h[row_of[i], :] and dtop_w[i] = h[row_of[i]]·act[row_of[i]] (moe_combine_down_backward).
extern "C" __global__ void moe_combine_down_backward_v8(uint4* dact, float* dtop_w, const uint4* h, const uint4* act, const float* top_w,
                                                        const int* row_of, int choices, int inter8)
{
    int choice = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (choice >= choices) return;
    i64 r = row_of[choice];
    float w = top_w[choice], s = 0.0f;
    for (int c = lane; c < inter8; c += 32)
    {
        float hv[8], a[8], d[8];
        unpack8(h[r * inter8 + c], hv);
        unpack8(act[r * inter8 + c], a);
#pragma unroll
        for (int i = 0; i < 8; i++) { s += hv[i] * a[i]; d[i] = w * hv[i]; }
        dact[r * inter8 + c] = pack8(d);
    }
    s = warp_sum(s);
    if (lane == 0) dtop_w[choice] = s;
}

// dx[t, :] = Σ_j drows[row_of[t·k + j], :], slots in order.
extern "C" __global__ void moe_gather_backward_v8(uint4* dx, const uint4* drows, const int* row_of, int n, int cols8, int k)
{
    int t = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    if (t >= n) return;
    for (int c = threadIdx.x & 31; c < cols8; c += 32)
    {
        float s[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        for (int j = 0; j < k; j++)
        {
            float v[8];
            unpack8(drows[(i64)row_of[(i64)t * k + j] * cols8 + c], v);
#pragma unroll
            for (int i = 0; i < 8; i++) s[i] += v[i];
        }
        dx[(i64)t * cols8 + c] = pack8(s);
    }
}

// ---------------------------------------------------------------------------------------------------------
// Tensor-core grouped products (BF16 operands, fp32 accumulation; mma.sync m16n8k16 as flash_attention.cu uses it,
// fragment layouts in mma.cuh). A block computes a 64×64 tile of one expert with 4 warps of 32×32; operands are
// staged in shared memory as bf16 (zero-filled past the ends), fragments read with ldmatrix.
// ---------------------------------------------------------------------------------------------------------
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
            ldsm_x4(a[i], As + (wm + 16 * i + (lane & 7) + ((lane >> 3) & 1) * 8) * TC_AS + kk + (lane >> 4) * 8);
#pragma unroll
        for (int j = 0; j < 2; j++)
        {
            unsigned b[4];
            int n0 = wn + 16 * j;
            if (b_nk) ldsm_x4(b, Bs + (n0 + (lane & 7) + (lane >> 4) * 8) * TC_AS + kk + ((lane >> 3) & 1) * 8);
            else ldsm_x4_trans(b, Bs + (kk + (lane & 7) + ((lane >> 3) & 1) * 8) * TC_BS + n0 + (lane >> 4) * 8);
#pragma unroll
            for (int i = 0; i < 2; i++)
            {
                mma16816(acc[i][2 * j], a[i], b[0], b[1]);
                mma16816(acc[i][2 * j + 1], a[i], b[2], b[3]);
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
    tile_of(offsets, e, blockIdx.y, GT, &expert, &row0, &row_end);
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

// ---------------------------------------------------------------------------------------------------------
// grouped_gemm_mma: the same product as grouped_gemm_tc (c[p, :] (+)= a[p, :]·op(w_x)), pipelined for throughput.
// Tile 128 rows × 128 columns: at qwen3-30b-a3b's shape an expert holds about 128 of the 16,384 routed rows, so one
// row tile usually covers a whole expert and each weight tile is read from memory about once per expert (a 64-row
// tile would read it twice); 128 columns halve the re-reads of the rows' tile against 64. Per-expert products are
// near the machine's balance point (each weight element is used by ~128 rows), so the weight stream must not stall:
// operands arrive by 16-byte cp.async copies into STAGES shared buffers — the copies of the next STAGES−1 k-steps
// are in flight while one is multiplied. Requires k_in % 8 == 0, n_out % 8 == 0 and 16-byte aligned a, w, c (a
// 16-byte chunk is then wholly inside or wholly past a row's end, and zero-filled past it by src-size 0).
//
// Block: 8 warps, 4 (rows) × 2 (columns); warp w owns rows wm = (w/2)·32 … +32 and columns wn = (w%2)·64 … +64 of
// the tile: 2 m16 × 8 n8 accumulators (64 floats per thread). A warp whose 32 rows all lie past the group's end
// (a short expert's tile) skips its products but still copies its share and meets every barrier.
// Shared memory per stage (bf16): A [128][BK+8] (rows × k), then B as [128][BK+8] (n × k, trans_w) or [BK][136]
// (k × n, read with ldmatrix.trans; BK·136 ≤ 128·(BK+8) for BK ≤ 64). The pad of 8 puts the 8 rows of an
// ldmatrix in 8 different 16-byte bank groups: strides 80, 144 and 272 bytes step 80, 16 and 16 bytes mod 128.
// Grid (ceil(N/128), ceil(rows/128) + E); column tiles vary fastest, so the blocks of one row tile run together
// and share its rows in L2, and an expert's second row tile follows a few blocks later while its weights are in L2.
// Instantiated (BK, STAGES): (64, 3) the default, (32, 3), (32, 4); two blocks per multiprocessor for each
// (110,592, 61,440 and 81,920 bytes of dynamic shared memory).
// ---------------------------------------------------------------------------------------------------------
#define GM_ROWS 128
#define GM_COLS 128
#define GM_THREADS 256
#define GM_SB 136                         // row stride (bf16) of [k][n] tiles

// tile_of for one warp, 32 experts at a time: lane x holds expert base + x's tile count, a warp scan gives the
// tiles before it, and the lane whose range holds `tile` answers. Same result as tile_of; E/32 steps, not E.
__device__ __forceinline__ void tile_of_warp(const int* offsets, int e, int tile, int tile_rows, int lane, int* expert, int* row0, int* row_end)
{
    int seen = 0;
    *expert = -1;
    for (int base = 0; base < e; base += 32)
    {
        const int x = base + lane;
        const int r0 = x < e ? offsets[x] : 0, r1 = x < e ? offsets[x + 1] : 0;
        const int tiles = (r1 - r0 + tile_rows - 1) / tile_rows;
        int upto = tiles;                                   // inclusive scan of the tile counts
#pragma unroll
        for (int o = 1; o < 32; o <<= 1)
        {
            const int v = __shfl_up_sync(FULL_MASK, upto, o);
            if (lane >= o) upto += v;
        }
        const int before = seen + upto - tiles;
        const unsigned hit = __ballot_sync(FULL_MASK, tile >= before && tile < before + tiles);
        if (hit)
        {
            const int src = __ffs(hit) - 1;
            *expert = base + src;
            *row0 = __shfl_sync(FULL_MASK, r0 + (tile - before) * tile_rows, src);
            *row_end = __shfl_sync(FULL_MASK, r1, src);
            return;
        }
        seen += __shfl_sync(FULL_MASK, upto, 31);
    }
}

template <int BK, int STAGES, bool TRANS>
__device__ __forceinline__ void grouped_mma_tile(void* c, int dt_c, const bf16_t* a, const bf16_t* w, int expert, int row0,
                                                 int row_end, int n_out, int k_in, int accumulate)
{
    constexpr int SA = BK + 8;                          // row stride of [row][k] and [n][k] tiles
    constexpr int B_OFFSET = GM_ROWS * SA;              // B after A within a stage
    constexpr int STAGE = 2 * GM_ROWS * SA;             // bf16 per stage
    constexpr int CPR = BK / 8;                         // 16-byte chunks per k-step row of A (and of B [n][k])
    constexpr int COPIES = GM_ROWS * CPR / GM_THREADS;  // chunks per thread per operand: BK/16 (B [k][n]: BK·16 chunks)
    static_assert(BK * GM_SB <= GM_ROWS * SA, "B [k][n] fits its stage slot");
    extern __shared__ __align__(16) unsigned char gm_smem[];
    bf16_t* sm = (bf16_t*)gm_smem;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int col0 = blockIdx.x * GM_COLS;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 64;
    const bool busy = row0 + wm < row_end;
    const bf16_t* we = w + (i64)expert * n_out * k_in;
    const int ktiles = (k_in + BK - 1) / BK;

    // k-step kt into stage buffer `stage`. Chunks past the group's last row, past N or past K are zero-filled.
    auto issue = [&](int stage, int kt)
    {
        bf16_t* As = sm + stage * STAGE;
        bf16_t* Bs = As + B_OFFSET;
        const int k0 = kt * BK;
#pragma unroll
        for (int i = 0; i < COPIES; i++)
        {
            const int idx = tid + i * GM_THREADS;
            const int r = idx / CPR, kc = (idx % CPR) * 8, row = row0 + r, kg = k0 + kc;
            const bool ok = row < row_end && kg < k_in;
            cp_async16(As + r * SA + kc, ok ? a + (i64)row * k_in + kg : a, ok);
            if (TRANS)
            {
                const int col = col0 + r;                                  // Bs[n][k] = w_x[n, k]
                const bool okb = col < n_out && kg < k_in;
                cp_async16(Bs + r * SA + kc, okb ? we + (i64)col * k_in + kg : w, okb);
            }
            else
            {
                const int kr = idx >> 4, nc = (idx & 15) * 8;              // Bs[k][n] = w_x[k, n]
                const int kgb = k0 + kr, col = col0 + nc;
                const bool okb = kgb < k_in && col < n_out;
                cp_async16(Bs + kr * GM_SB + nc, okb ? we + (i64)kgb * n_out + col : w, okb);
            }
        }
    };

    float acc[2][8][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[i][j][q] = 0.0f;

    // One commit group per k-step (empty past the end), so wait_group<STAGES−2> at step kt always means "steps up to
    // kt have landed": before it, groups 0 … kt+STAGES−2 were committed.
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++)
    {
        if (s < ktiles) issue(s, s);
        cp_async_commit();
    }
    for (int kt = 0; kt < ktiles; kt++)
    {
        cp_async_wait<STAGES - 2>();
        // Every thread's copies of step kt are visible, and every warp is done multiplying step kt−1, whose buffer
        // ((kt + STAGES − 1) mod STAGES) the next copies overwrite.
        __syncthreads();
        const int next = kt + STAGES - 1;
        if (next < ktiles) issue(next % STAGES, next);
        cp_async_commit();
        if (!busy) continue;
        const bf16_t* As = sm + (kt % STAGES) * STAGE;
        const bf16_t* Bs = As + B_OFFSET;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16)
        {
            unsigned af[2][4];
            frag_a(af[0], As, SA, wm, kk, lane);
            frag_a(af[1], As, SA, wm + 16, kk, lane);
#pragma unroll
            for (int j = 0; j < 4; j++)
            {
                unsigned bfr[4];   // n8 tiles 2j (bfr[0], bfr[1]) and 2j+1 (bfr[2], bfr[3]) of the warp's 64 columns
                if (TRANS) frag_b_nk(bfr, Bs, SA, wn + 16 * j, kk, lane);
                else frag_b_kn(bfr, Bs, GM_SB, wn + 16 * j, kk, lane);
#pragma unroll
                for (int i = 0; i < 2; i++)
                {
                    mma16816(acc[i][2 * j], af[i], bfr[0], bfr[1]);
                    mma16816(acc[i][2 * j + 1], af[i], bfr[2], bfr[3]);
                }
            }
        }
    }
    cp_async_wait<0>();
    if (!busy) return;

    // C fragment: acc[i][j][2h], acc[i][j][2h+1] are row wm + 16i + g + 8h, columns wn + 8j + 2t and +1 — an adjacent
    // pair, wholly inside the row since n_out is a multiple of 8; written as one 4-byte (bf16) or 8-byte (f32) store.
    // Accumulation reads c, adds in fp32 and rounds once, as grouped_gemm does.
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int h = 0; h < 2; h++)
        {
            const int row = row0 + wm + 16 * i + g + 8 * h;
            if (row >= row_end) continue;
#pragma unroll
            for (int j = 0; j < 8; j++)
            {
                const int col = col0 + wn + 8 * j + 2 * t;
                if (col >= n_out) continue;
                float v0 = acc[i][j][2 * h], v1 = acc[i][j][2 * h + 1];
                const i64 o = (i64)row * n_out + col;
                if (dt_c == FT_BF16)
                {
                    unsigned* p = (unsigned*)((bf16_t*)c + o);
                    if (accumulate)
                    {
                        const unsigned old = *p;
                        v0 = bf16_to_f32((unsigned short)(old & 0xffffu)) + v0;
                        v1 = bf16_to_f32((unsigned short)(old >> 16)) + v1;
                    }
                    *p = pack_bf16(v0, v1);
                }
                else
                {
                    float2* p = (float2*)((float*)c + o);
                    if (accumulate)
                    {
                        const float2 old = *p;
                        v0 = old.x + v0;
                        v1 = old.y + v1;
                    }
                    *p = make_float2(v0, v1);
                }
            }
        }
}

// a, w bf16; c bf16 or f32 (written or accumulated). 256 threads and STAGES · 2 · 128 · (BK+8) · 2 bytes of dynamic
// shared memory (CudaBackend raises the 48 KiB default). Two blocks per multiprocessor: at most 128 registers a thread.
#define GROUPED_GEMM_MMA(BK, STAGES)                                                                                     \
    extern "C" __global__ void __launch_bounds__(GM_THREADS, 2) grouped_gemm_mma_k##BK##s##STAGES(                      \
        void* c, int dt_c, const bf16_t* a, const bf16_t* w, const int* offsets, int e, int n_out, int k_in, int trans_w, \
        int accumulate)                                                                                                  \
    {                                                                                                                    \
        int expert = -1, row0 = 0, row_end = 0;                                                                          \
        tile_of_warp(offsets, e, blockIdx.y, GM_ROWS, threadIdx.x & 31, &expert, &row0, &row_end);                      \
        if (expert < 0) return;                                                                                          \
        if (trans_w) grouped_mma_tile<BK, STAGES, true>(c, dt_c, a, w, expert, row0, row_end, n_out, k_in, accumulate);  \
        else grouped_mma_tile<BK, STAGES, false>(c, dt_c, a, w, expert, row0, row_end, n_out, k_in, accumulate);         \
    }
GROUPED_GEMM_MMA(64, 3)
GROUPED_GEMM_MMA(32, 3)
GROUPED_GEMM_MMA(32, 4)

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

// ---------------------------------------------------------------------------------------------------------
// grouped_gemm_weight_grad_mma: dw_x[n, k] += Σ_{p ∈ rows of x} dc[p, n]·a[p, k] (dc, a bf16; dw f32), the pipeline of
// grouped_gemm_mma with the reduction over the group's rows p. Block: a 128 (n) × 128 (k) tile of one expert, 8 warps
// as there (warp: n wm … +32, k wn … +64). Both operands are staged as they lie in memory, rows p: As[p][n] from dc and
// Bs[p][k] from a, stride 136; A = dc_xᵀ is read with ldmatrix.trans (frag_a_kn), B with frag_b_kn. Rows past the
// group's end, columns past N or K are zero-filled, so a partial step adds nothing. Requires n_out % 8 == 0,
// k_in % 8 == 0 and 16-byte aligned dw, dc, a. Each dw element has one owner block: no atomics, deterministic.
// Grid (ceil(K/128), ceil(N/128), E), 256 threads, STAGES · 2 · BK · 136 · 2 bytes (BK 32, 3 stages: 52,224).
// ---------------------------------------------------------------------------------------------------------

// A fragment (m rows m0..m0+15, k0..k0+15) of a tile stored [k][m] (rows are k), transposed by ldmatrix: matrices
// 0..3 are (k +0, m +0), (k +0, m +8), (k +8, m +0), (k +8, m +8) = a0 … a3.
__device__ __forceinline__ void frag_a_kn(unsigned* a, const bf16_t* tile, int stride, int m0, int k0, int lane)
{
    ldsm_x4_trans(a, tile + (k0 + (lane & 7) + (lane >> 4) * 8) * stride + m0 + ((lane >> 3) & 1) * 8);
}

template <int BK, int STAGES>
__device__ __forceinline__ void grouped_weight_grad_mma(float* dw, const bf16_t* dc, const bf16_t* a, const int* offsets, int n_out, int k_in)
{
    constexpr int STAGE = 2 * BK * GM_SB;               // bf16 per stage: As [BK][136], then Bs [BK][136]
    constexpr int COPIES = BK * 16 / GM_THREADS;        // 16-byte chunks per thread per operand
    extern __shared__ __align__(16) unsigned char gw_smem[];
    bf16_t* sm = (bf16_t*)gw_smem;
    const int expert = blockIdx.z, r0 = offsets[expert], r1 = offsets[expert + 1];
    if (r1 <= r0) return;
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, g = lane >> 2, t = lane & 3;
    const int n0 = blockIdx.y * GM_ROWS, k0 = blockIdx.x * GM_COLS;
    const int wm = (warp >> 1) * 32, wn = (warp & 1) * 64;
    const int steps = (r1 - r0 + BK - 1) / BK;

    auto issue = [&](int stage, int s)
    {
        bf16_t* As = sm + stage * STAGE;
        bf16_t* Bs = As + BK * GM_SB;
#pragma unroll
        for (int i = 0; i < COPIES; i++)
        {
            const int idx = tid + i * GM_THREADS;
            const int pr = idx >> 4, c8 = (idx & 15) * 8, p = r0 + s * BK + pr;
            const bool okn = p < r1 && n0 + c8 < n_out, okk = p < r1 && k0 + c8 < k_in;
            cp_async16(As + pr * GM_SB + c8, okn ? dc + (i64)p * n_out + n0 + c8 : dc, okn);
            cp_async16(Bs + pr * GM_SB + c8, okk ? a + (i64)p * k_in + k0 + c8 : a, okk);
        }
    };

    float acc[2][8][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int q = 0; q < 4; q++) acc[i][j][q] = 0.0f;

    // Commit groups and barriers exactly as grouped_mma_tile.
#pragma unroll
    for (int s = 0; s < STAGES - 1; s++)
    {
        if (s < steps) issue(s, s);
        cp_async_commit();
    }
    for (int s = 0; s < steps; s++)
    {
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int next = s + STAGES - 1;
        if (next < steps) issue(next % STAGES, next);
        cp_async_commit();
        const bf16_t* As = sm + (s % STAGES) * STAGE;
        const bf16_t* Bs = As + BK * GM_SB;
#pragma unroll
        for (int kk = 0; kk < BK; kk += 16)
        {
            unsigned af[2][4];
            frag_a_kn(af[0], As, GM_SB, wm, kk, lane);
            frag_a_kn(af[1], As, GM_SB, wm + 16, kk, lane);
#pragma unroll
            for (int j = 0; j < 4; j++)
            {
                unsigned bfr[4];
                frag_b_kn(bfr, Bs, GM_SB, wn + 16 * j, kk, lane);
#pragma unroll
                for (int i = 0; i < 2; i++)
                {
                    mma16816(acc[i][2 * j], af[i], bfr[0], bfr[1]);
                    mma16816(acc[i][2 * j + 1], af[i], bfr[2], bfr[3]);
                }
            }
        }
    }
    cp_async_wait<0>();

    // acc[i][j][2h], [2h+1]: dw row n0 + wm + 16i + g + 8h, columns k0 + wn + 8j + 2t and +1 (one 8-byte pair).
    const i64 base = (i64)expert * n_out * k_in;
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int h = 0; h < 2; h++)
        {
            const int nn = n0 + wm + 16 * i + g + 8 * h;
            if (nn >= n_out) continue;
#pragma unroll
            for (int j = 0; j < 8; j++)
            {
                const int kk = k0 + wn + 8 * j + 2 * t;
                if (kk >= k_in) continue;
                float2* p = (float2*)(dw + base + (i64)nn * k_in + kk);
                float2 v = *p;
                v.x += acc[i][j][2 * h];
                v.y += acc[i][j][2 * h + 1];
                *p = v;
            }
        }
}

extern "C" __global__ void __launch_bounds__(GM_THREADS, 2) grouped_gemm_weight_grad_mma(float* dw, const bf16_t* dc, const bf16_t* a,
                                                                                        const int* offsets, int n_out, int k_in)
{
    grouped_weight_grad_mma<32, 3>(dw, dc, a, offsets, n_out, k_in);
}
