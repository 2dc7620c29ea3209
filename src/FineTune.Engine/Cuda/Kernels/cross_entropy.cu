// Softmax cross-entropy over rows of logits [N, V], one block per row, two passes over the row:
// (1) online max and Σexp, (2) the gradient gradScale·(softmax − onehot) written over the logits.
// loss_r = log Σ exp(x) − x[label]; lossSum += Σ_r loss_r. Label −100 = ignored (zero loss, zero gradient row).
#include "common.cuh"

extern "C" __global__ void cross_entropy(void* logits, int dt, const int* labels, float* loss_sum, int rows, int vocab,
                                         float grad_scale, int compute_grad)
{
    int r = blockIdx.x;
    if (r >= rows) return;
    i64 base = (i64)r * vocab;
    int label = labels[r];
    if (label == -100 || label < 0 || label >= vocab)
    {
        if (compute_grad) for (int c = threadIdx.x; c < vocab; c += blockDim.x) st(logits, base + c, 0.0f, dt);
        return;
    }
    // Online softmax statistics: per thread (m, s) with s = Σ exp(x − m), then merged.
    float m = -INFINITY, s = 0.0f;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x)
    {
        float v = ld(logits, base + c, dt);
        if (v > m) { s = s * expf(m - v) + 1.0f; m = v; }
        else s += expf(v - m);
    }
    float gm = block_max(m);
    float gs = block_sum(m == -INFINITY ? 0.0f : s * expf(m - gm));
    float target = ld(logits, base + label, dt);
    __syncthreads();
    if (threadIdx.x == 0) atomicAdd(loss_sum, logf(gs) + gm - target);
    if (!compute_grad) return;
    float inv = grad_scale / gs;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x)
    {
        float p = expf(ld(logits, base + c, dt) - gm) * inv;
        st(logits, base + c, c == label ? p - grad_scale : p, dt);
    }
}
