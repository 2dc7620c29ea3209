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
