// Greedy decoding on the device: the index of each row's largest logit, so a greedy step downloads one int per
// sequence instead of a vocabulary of logits. Ties go to the lowest index (as the host's first-maximum scan).
#include "common.cuh"

__device__ __forceinline__ void better(float& v, int& i, float ov, int oi)
{
    if (ov > v || (ov == v && oi < i)) { v = ov; i = oi; }
}

// One block (blockDim.x a multiple of 32) per row.
extern "C" __global__ void argmax_rows(const void* x, int dt, int* out, int cols)
{
    __shared__ float vals[32];
    __shared__ int idxs[32];
    i64 base = (i64)blockIdx.x * cols;
    float v = -INFINITY;
    int best = 0x7fffffff;
    for (int c = threadIdx.x; c < cols; c += blockDim.x) better(v, best, ld(x, base + c, dt), c);
    for (int o = 16; o > 0; o >>= 1) better(v, best, __shfl_xor_sync(FULL_MASK, v, o), __shfl_xor_sync(FULL_MASK, best, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) { vals[warp] = v; idxs[warp] = best; }
    __syncthreads();
    if (warp != 0) return;
    v = lane < warps ? vals[lane] : -INFINITY;
    best = lane < warps ? idxs[lane] : 0x7fffffff;
    for (int o = 16; o > 0; o >>= 1) better(v, best, __shfl_xor_sync(FULL_MASK, v, o), __shfl_xor_sync(FULL_MASK, best, o));
    // A row of -inf (or NaN) only: index 0, as the host scan returns.
    if (lane == 0) out[blockIdx.x] = best == 0x7fffffff ? 0 : best;
}

// The same over many blocks per row, for the few long rows of a decode step (one block alone read a 151,936-logit
// row at ~1.5 GB/s, 0.2 ms a step on an H200): grid (parts, rows); part p of a row takes columns
// [p·span, (p + 1)·span) and leaves its (value, index) in part_v / part_i [rows, parts]; the last part of a row to
// finish (counters [rows], zeros, set back to 0 by that part for the next launch or graph replay) picks among the
// row's parts with the same tie rule, so the answer is argmax_rows'. A programmatic dependent launch may start it
// while the LM head's GEMV drains: it waits before reading the logits.
extern "C" __global__ void argmax_partial(const void* x, int dt, float* part_v, int* part_i, int cols, int span, int* out, unsigned* counters)
{
    pdl_trigger();
    pdl_wait();
    __shared__ float vals[32];
    __shared__ int idxs[32];
    int p = blockIdx.x, parts = gridDim.x, row = blockIdx.y;
    i64 base = (i64)row * cols;
    int c0 = p * span, c1 = min(cols, c0 + span);
    float v = -INFINITY;
    int best = 0x7fffffff;
#pragma unroll 4
    for (int c = c0 + threadIdx.x; c < c1; c += blockDim.x) better(v, best, ld(x, base + c, dt), c);
    for (int o = 16; o > 0; o >>= 1) better(v, best, __shfl_xor_sync(FULL_MASK, v, o), __shfl_xor_sync(FULL_MASK, best, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    if (lane == 0) { vals[warp] = v; idxs[warp] = best; }
    __syncthreads();
    if (warp != 0) return;
    v = lane < warps ? vals[lane] : -INFINITY;
    best = lane < warps ? idxs[lane] : 0x7fffffff;
    for (int o = 16; o > 0; o >>= 1) better(v, best, __shfl_xor_sync(FULL_MASK, v, o), __shfl_xor_sync(FULL_MASK, best, o));
    bool last = false;
    if (lane == 0)
    {
        part_v[(i64)row * parts + p] = v;
        part_i[(i64)row * parts + p] = best;
        __threadfence(); // the part reaches L2 before its count does
        last = atomicAdd(counters + row, 1u) == (unsigned)parts - 1;
        if (last) counters[row] = 0u; // every other part of the row has counted
    }
    if (!__shfl_sync(FULL_MASK, last, 0)) return;
    // The row's last part: warp 0 over the row's parts (≤ 64), L1-bypassing loads (other blocks wrote them).
    __threadfence();
    v = -INFINITY;
    best = 0x7fffffff;
    for (int q = lane; q < parts; q += 32) better(v, best, __ldcg(part_v + (i64)row * parts + q), __ldcg(part_i + (i64)row * parts + q));
    for (int o = 16; o > 0; o >>= 1) better(v, best, __shfl_xor_sync(FULL_MASK, v, o), __shfl_xor_sync(FULL_MASK, best, o));
    if (lane == 0) out[row] = best == 0x7fffffff ? 0 : best;
}

