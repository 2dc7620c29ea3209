// AdamW on fp32 master weights (as torch.optim.AdamW) with global-norm gradient clipping read on the device,
// and the squared-norm reduction it needs; each also in a multi-tensor form that runs a whole list in one launch.
#include "common.cuh"

// Σ x² over this thread's share of x when x is split over `blocks` blocks and this is block `block`: the grid-stride
// loop of a launch of `blocks` blocks. The single- and multi-tensor kernels share it, so their sums are the same bits.
__device__ __forceinline__ float squares_share(const void* x, int dt, i64 n, i64 block, i64 blocks)
{
    float v = 0.0f;
    for (i64 i = block * blockDim.x + threadIdx.x; i < n; i += blocks * blockDim.x) { float a = ld(x, i, dt); v += a * a; }
    return v;
}

// partial[block] = Σ x² over the block's grid-stride share; sum_into then adds the blocks' sums to acc[0] in block
// order, so the clipping norm — and with it every weight — is the same bits run to run.
extern "C" __global__ void sum_of_squares_partial(const void* x, int dt, i64 n, float* partial)
{
    float v = block_sum(squares_share(x, dt, n, blockIdx.x, gridDim.x));
    if (threadIdx.x == 0) partial[blockIdx.x] = v;
}

// acc[0] += Σ partial[0 .. count) (one block).
extern "C" __global__ void sum_into(const float* partial, i64 count, float* acc)
{
    float v = ordered_sum(partial, count);
    if (threadIdx.x == 0) acc[0] += v;
}

// g' = g·scale, scale = grad_scale·min(1, max_norm/(grad_scale·‖g‖ + 1e-6)) when clipping;
// m = β1·m + (1−β1)·g'; v = β2·v + (1−β2)·g'²; p = p·(1 − lr·wd) − (lr/bc1)·m/(sqrt(v)/sqrt(bc2) + eps).
// Over this thread's share of the n values when they are split over `blocks` blocks and this is block `block`.
__device__ __forceinline__ void adamw_share(float* param, const float* grad, float* m, float* v, void* copy, int dt_copy,
                                            const float* grad_norm_sq, i64 n, i64 block, i64 blocks, float lr, float beta1,
                                            float beta2, float eps, float weight_decay, float bc1, float bc2_sqrt,
                                            float grad_scale, float max_norm)
{
    float scale = grad_scale;
    if (max_norm > 0.0f && grad_norm_sq != nullptr)
    {
        float norm = grad_scale * sqrtf(*grad_norm_sq);
        float coef = max_norm / (norm + 1e-6f);
        if (coef < 1.0f) scale *= coef;
    }
    float decay = 1.0f - lr * weight_decay;
    float step_size = lr / bc1;
    for (i64 i = block * blockDim.x + threadIdx.x; i < n; i += blocks * blockDim.x)
    {
        float g = grad[i] * scale;
        float mi = beta1 * m[i] + (1.0f - beta1) * g;
        float vi = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = mi; v[i] = vi;
        float p = param[i] * decay - step_size * mi / (sqrtf(vi) / bc2_sqrt + eps);
        param[i] = p;
        if (copy != nullptr) st(copy, i, p, dt_copy);
    }
}

extern "C" __global__ void adamw_step(float* param, const float* grad, float* m, float* v, void* copy, int dt_copy,
                                      const float* grad_norm_sq, i64 n, float lr, float beta1, float beta2, float eps,
                                      float weight_decay, float bc1, float bc2_sqrt, float grad_scale, float max_norm)
{
    adamw_share(param, grad, m, v, copy, dt_copy, grad_norm_sq, n, blockIdx.x, gridDim.x, lr, beta1, beta2, eps,
                weight_decay, bc1, bc2_sqrt, grad_scale, max_norm);
}

// ---- multi-tensor forms ----
// A list of tensors in one launch: entry t owns grid blocks [first, first + blocks), the number of blocks its own
// single-tensor launch would have (host-computed, CudaBackend.Blocks), and strides over its values as that launch
// does. The host writes the tables (CudaBackend.Optimizer.cs) with the same layout: 8-byte fields, then 4-byte ones.

struct SquaresEntry { const void* x; i64 n; i64 first; int dt; int blocks; };
struct AdamWEntry { float* param; const float* grad; float* m; float* v; void* copy; i64 n; i64 first; int dt_copy; int blocks; };
struct AdamWHyper { float lr, beta1, beta2, eps, weight_decay, bc1, bc2_sqrt, grad_scale, max_norm; };

// The entry whose blocks hold grid block b: the last with first ≤ b (entries in block order, entry 0 at block 0).
template <typename Entry> __device__ __forceinline__ int entry_of(const Entry* entries, int count, i64 b)
{
    int lo = 0, hi = count - 1;
    while (lo < hi)
    {
        int mid = (lo + hi + 1) >> 1;
        if (entries[mid].first <= b) lo = mid; else hi = mid - 1;
    }
    return lo;
}

// partial[first_t + j] = what sum_of_squares_partial's block j writes for tensor t.
extern "C" __global__ void sum_of_squares_partial_many(const SquaresEntry* entries, int count, float* partial)
{
    const SquaresEntry& e = entries[entry_of(entries, count, blockIdx.x)];
    i64 block = blockIdx.x - e.first;
    float v = block_sum(squares_share(e.x, e.dt, e.n, block, e.blocks));
    if (threadIdx.x == 0) partial[e.first + block] = v;
}

// Block t: totals[t] = ordered_sum of tensor t's partials (sum_into's sum, 1024 threads as it has). The block that
// finishes last then adds the totals to acc[0] one by one in list order — the additions of the per-tensor sum_into
// launches, in their order — and re-arms done (zero between launches) for the next call.
extern "C" __global__ void sum_into_many(const SquaresEntry* entries, int count, const float* partial, float* totals,
                                         unsigned* done, float* acc)
{
    const SquaresEntry& e = entries[blockIdx.x];
    float v = ordered_sum(partial + e.first, e.blocks);
    __shared__ bool last;
    if (threadIdx.x == 0)
    {
        totals[blockIdx.x] = v;
        __threadfence();
        last = atomicAdd(done, 1u) == (unsigned)count - 1;
    }
    __syncthreads();
    if (!last) return;
    __threadfence();
    __shared__ float staged[1024];
    float a = acc[0];
    for (int base = 0; base < count; base += blockDim.x)
    {
        int t = base + threadIdx.x;
        if (t < count) staged[threadIdx.x] = ((volatile const float*)totals)[t];
        __syncthreads();
        if (threadIdx.x == 0)
            for (int j = 0; j < blockDim.x && base + j < count; j++) a += staged[j];
        __syncthreads();
    }
    if (threadIdx.x == 0) { acc[0] = a; *done = 0u; }
}

// adamw_step of every entry t with its own hyper-parameters hyper[t].
extern "C" __global__ void adamw_step_many(const AdamWEntry* entries, const AdamWHyper* hyper, int count, const float* grad_norm_sq)
{
    int t = entry_of(entries, count, blockIdx.x);
    const AdamWEntry& e = entries[t];
    const AdamWHyper h = hyper[t];
    adamw_share(e.param, e.grad, e.m, e.v, e.copy, e.dt_copy, grad_norm_sq, e.n, blockIdx.x - e.first, e.blocks, h.lr,
                h.beta1, h.beta2, h.eps, h.weight_decay, h.bc1, h.bc2_sqrt, h.grad_scale, h.max_norm);
}
