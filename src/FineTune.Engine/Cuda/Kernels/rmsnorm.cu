// RMSNorm: rstd = 1/sqrt(mean(x²) + eps), y = x·rstd·w. One warp per row; statistics in fp32.
#include "common.cuh"

extern "C" __global__ void rmsnorm_forward(void* y, int dt_y, float* rstd, const void* x, int dt_x, const void* w, int dt_w,
                                           int rows, int cols, float eps)
{
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    i64 base = (i64)row * cols;
    float ss = 0.0f;
    for (int c = lane; c < cols; c += 32) { float v = ld(x, base + c, dt_x); ss += v * v; }
    ss = warp_sum(ss);
    float inv = rsqrtf(ss / cols + eps);
    if (lane == 0) rstd[row] = inv;
    for (int c = lane; c < cols; c += 32) st(y, base + c, ld(x, base + c, dt_x) * inv * ld(w, c, dt_w), dt_y);
}

// Residual add fused with the norm (one pass fewer over the residual stream):
// resid = a + b; y = rmsnorm(resid).
extern "C" __global__ void residual_rmsnorm_forward(void* resid, int dt_r, void* y, int dt_y, float* rstd,
                                                    const void* a, int dt_a, const void* b, int dt_b, const void* w, int dt_w,
                                                    int rows, int cols, float eps)
{
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    i64 base = (i64)row * cols;
    float ss = 0.0f;
    for (int c = lane; c < cols; c += 32)
    {
        float v = ld(a, base + c, dt_a) + ld(b, base + c, dt_b);
        st(resid, base + c, v, dt_r);
        v = ld(resid, base + c, dt_r); // normalise what was stored, as an unfused add then norm would
        ss += v * v;
    }
    ss = warp_sum(ss);
    float inv = rsqrtf(ss / cols + eps);
    if (lane == 0) rstd[row] = inv;
    for (int c = lane; c < cols; c += 32) st(y, base + c, ld(resid, base + c, dt_r) * inv * ld(w, c, dt_w), dt_y);
}

// x̂ = x·rstd, g = w⊙dy: dx += rstd·(g − x̂·mean(g⊙x̂)) = rstd·g − rstd³·mean(g⊙x)·x.
extern "C" __global__ void rmsnorm_backward_dx(void* dx, int dt_dx, const void* dy, int dt_dy, const void* x, int dt_x,
                                               const void* w, int dt_w, const float* rstd, int rows, int cols)
{
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    i64 base = (i64)row * cols;
    float inv = rstd[row];
    float dot = 0.0f;
    for (int c = lane; c < cols; c += 32) dot += ld(dy, base + c, dt_dy) * ld(w, c, dt_w) * ld(x, base + c, dt_x);
    dot = warp_sum(dot);
    float k = inv * inv * inv * dot / cols;
    for (int c = lane; c < cols; c += 32)
    {
        float g = ld(dy, base + c, dt_dy) * ld(w, c, dt_w);
        st(dx, base + c, ld(dx, base + c, dt_dx) + inv * g - k * ld(x, base + c, dt_x), dt_dx);
    }
}

// dw[c] += Σ_r dy[r, c]·x[r, c]·rstd[r]: one thread per column, rows in order (deterministic).
extern "C" __global__ void rmsnorm_backward_dw(void* dw, int dt_dw, const void* dy, int dt_dy, const void* x, int dt_x,
                                               const float* rstd, int rows, int cols)
{
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= cols) return;
    float acc = 0.0f;
    for (int r = 0; r < rows; r++) acc += ld(dy, (i64)r * cols + c, dt_dy) * ld(x, (i64)r * cols + c, dt_x) * rstd[r];
    st(dw, c, ld(dw, c, dt_dw) + acc, dt_dw);
}
