// Softmax cross-entropy and label log-probabilities over rows of logits [N, V], one block per row, two passes over
// the row: (1) online max and Σexp, (2) the gradient scale·(softmax − onehot) written over the logits.
// loss_r = log Σ exp(x) − x[label] = −log_softmax(x)[label]. Label −100 = ignored (zero loss, zero gradient row).
// cross_entropy sums loss_r into one scalar (the SFT loss); label_log_probs writes −loss_r per row with a per-row
// gradient scale (the preference objectives, whose ∂L/∂logp is one constant per sequence). Both run xent_row.
#include "common.cuh"

// The row's loss into *loss (every thread); false for an ignored label. With compute_grad the row ends as
// grad_scale·(softmax − onehot) (zeros when ignored). The label is uniform over the block, so the early return is too.
__device__ __forceinline__ bool xent_row(void* logits, int dt, i64 base, int label, int vocab, float grad_scale, int compute_grad,
                                         float* loss)
{
    if (label == -100 || label < 0 || label >= vocab)
    {
        if (compute_grad) for (int c = threadIdx.x; c < vocab; c += blockDim.x) st(logits, base + c, 0.0f, dt);
        return false;
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
    // Every thread has read the label's logit before any thread overwrites the row with the gradient.
    __syncthreads();
    *loss = logf(gs) + gm - target;
    if (!compute_grad) return true;
    float inv = grad_scale / gs;
    for (int c = threadIdx.x; c < vocab; c += blockDim.x)
    {
        float p = expf(ld(logits, base + c, dt) - gm) * inv;
        st(logits, base + c, c == label ? p - grad_scale : p, dt);
    }
    return true;
}

// xent_row over a bf16 row eight logits per 16-byte load (vocab a multiple of 8, rows 16-byte aligned): the same two
// passes, with per-thread statistics merged eight values at a time (so its sums round in another order than xent_row's:
// equal within float rounding, not bit for bit). A 256-row chunk of a 152k vocabulary is 78 MB: the scalar loads of
// xent_row keep too few bytes in flight to stream it at the memory's bandwidth.
__device__ __forceinline__ bool xent_row_v8(uint4* row, int label, int vocab, float grad_scale, int compute_grad, float* loss)
{
    int vocab8 = vocab / 8;
    if (label == -100 || label < 0 || label >= vocab)
    {
        if (compute_grad) for (int c = threadIdx.x; c < vocab8; c += blockDim.x) row[c] = make_uint4(0u, 0u, 0u, 0u);
        return false;
    }
    float m = -INFINITY, s = 0.0f;
#pragma unroll 4
    for (int c = threadIdx.x; c < vocab8; c += blockDim.x)
    {
        float v[8];
        unpack8(row[c], v);
        float vm = v[0];
#pragma unroll
        for (int j = 1; j < 8; j++) vm = fmaxf(vm, v[j]);
        if (vm > m) { s *= expf(m - vm); m = vm; }
        if (m != -INFINITY)
        {
#pragma unroll
            for (int j = 0; j < 8; j++) s += expf(v[j] - m);
        }
    }
    float gm = block_max(m);
    float gs = block_sum(m == -INFINITY ? 0.0f : s * expf(m - gm));
    float target = bf16_to_f32(((const unsigned short*)row)[label]);
    // Every thread has read the label's logit before any thread overwrites the row with the gradient.
    __syncthreads();
    *loss = logf(gs) + gm - target;
    if (!compute_grad) return true;
    float inv = grad_scale / gs;
    int label8 = label / 8;
#pragma unroll 4
    for (int c = threadIdx.x; c < vocab8; c += blockDim.x)
    {
        float v[8];
        unpack8(row[c], v);
#pragma unroll
        for (int j = 0; j < 8; j++) v[j] = expf(v[j] - gm) * inv;
        if (c == label8) v[label % 8] -= grad_scale;
        row[c] = pack8(v);
    }
    return true;
}

// row_loss[r] = the row's loss (0 when ignored); cross_entropy_sum adds them to loss_sum in row order afterwards
// (not atomically per row: the logged loss is then the same bits run to run).
extern "C" __global__ void cross_entropy(void* logits, int dt, const int* labels, float* row_loss, int rows, int vocab,
                                         float grad_scale, int compute_grad)
{
    int r = blockIdx.x;
    if (r >= rows) return;
    float loss;
    bool labelled = xent_row(logits, dt, (i64)r * vocab, labels[r], vocab, grad_scale, compute_grad, &loss);
    if (threadIdx.x == 0) row_loss[r] = labelled ? loss : 0.0f;
}

// loss_sum[0] += Σ row_loss[0 .. rows) (one block).
extern "C" __global__ void cross_entropy_sum(const float* row_loss, int rows, float* loss_sum)
{
    float v = ordered_sum(row_loss, rows);
    if (threadIdx.x == 0) loss_sum[0] += v;
}

// log_probs[r] = log_softmax(logits[r])[labels[r]] (0 when ignored); grad_scales null = forward only.
extern "C" __global__ void label_log_probs(void* logits, int dt, const int* labels, float* log_probs, const float* grad_scales,
                                           int rows, int vocab)
{
    int r = blockIdx.x;
    if (r >= rows) return;
    float loss = 0.0f;
    int grad = grad_scales != nullptr;
    bool labelled = xent_row(logits, dt, (i64)r * vocab, labels[r], vocab, grad ? grad_scales[r] : 0.0f, grad, &loss);
    if (threadIdx.x == 0) log_probs[r] = labelled ? -loss : 0.0f;
}

// The bf16 fast paths of cross_entropy and label_log_probs (xent_row_v8).
extern "C" __global__ void cross_entropy_v8(uint4* logits, const int* labels, float* row_loss, int rows, int vocab, float grad_scale,
                                            int compute_grad)
{
    int r = blockIdx.x;
    if (r >= rows) return;
    float loss;
    bool labelled = xent_row_v8(logits + (i64)r * (vocab / 8), labels[r], vocab, grad_scale, compute_grad, &loss);
    if (threadIdx.x == 0) row_loss[r] = labelled ? loss : 0.0f;
}

extern "C" __global__ void label_log_probs_v8(uint4* logits, const int* labels, float* log_probs, const float* grad_scales, int rows,
                                              int vocab)
{
    int r = blockIdx.x;
    if (r >= rows) return;
    float loss = 0.0f;
    int grad = grad_scales != nullptr;
    bool labelled = xent_row_v8(logits + (i64)r * (vocab / 8), labels[r], vocab, grad ? grad_scales[r] : 0.0f, grad, &loss);
    if (threadIdx.x == 0) log_probs[r] = labelled ? -loss : 0.0f;
}
