// AdamW on fp32 master weights (as torch.optim.AdamW) with global-norm gradient clipping read on the device,
// and the squared-norm reduction it needs.
#include "common.cuh"

// partial[block] = Σ x² over the block's grid-stride share; sum_into then adds the blocks' sums to acc[0] in block
// order, so the clipping norm — and with it every weight — is the same bits run to run.
extern "C" __global__ void sum_of_squares_partial(const void* x, int dt, i64 n, float* partial)
{
    float v = 0.0f;
    GRID_STRIDE(i, n) { float a = ld(x, i, dt); v += a * a; }
    v = block_sum(v);
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
extern "C" __global__ void adamw_step(float* param, const float* grad, float* m, float* v, void* copy, int dt_copy,
                                      const float* grad_norm_sq, i64 n, float lr, float beta1, float beta2, float eps,
                                      float weight_decay, float bc1, float bc2_sqrt, float grad_scale, float max_norm)
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
    GRID_STRIDE(i, n)
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
