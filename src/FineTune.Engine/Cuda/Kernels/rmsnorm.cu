// RMSNorm: rstd = 1/sqrt(mean(x²) + eps), y = x·rstd·(off + w). One warp per row; statistics in fp32.
// off is 0 for llama-style norms, 1 for gemma's (1 + w); the product is taken in fp32 and rounded once.
// fp8_scaling: delayed (a ready site's scale is known before the kernel runs): the *_fp8_v8 kernels also write the E4M3
// codes of y as stored for the next FP8 product (q/k/v's from ln1, gate/up's from ln2), with fp8.cuh's cast of
// fp8_quantize_delayed_v8, so the codes, the scale inverse and the recorded amax are those of the separate cast, which
// would read y back once more.
#include "fp8.cuh"

extern "C" __global__ void rmsnorm_forward(void* y, int dt_y, float* rstd, const void* x, int dt_x, const void* w, int dt_w,
                                           int rows, int cols, float eps, float off)
{
    pdl_trigger(); // the next GEMV may start streaming its weight (common.cuh)
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    i64 base = (i64)row * cols;
    float ss = 0.0f;
    for (int c = lane; c < cols; c += 32) { float v = ld(x, base + c, dt_x); ss += v * v; }
    ss = warp_sum(ss);
    float inv = rsqrtf(ss / cols + eps);
    if (lane == 0) rstd[row] = inv;
    for (int c = lane; c < cols; c += 32) st(y, base + c, ld(x, base + c, dt_x) * inv * (ld(w, c, dt_w) + off), dt_y);
}

// Residual add fused with the norm (one pass fewer over the residual stream):
// resid = a + b; y = rmsnorm(resid).
extern "C" __global__ void residual_rmsnorm_forward(void* resid, int dt_r, void* y, int dt_y, float* rstd,
                                                    const void* a, int dt_a, const void* b, int dt_b, const void* w, int dt_w,
                                                    int rows, int cols, float eps, float off)
{
    pdl_trigger(); // the next GEMV may start streaming its weight (common.cuh)
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
    for (int c = lane; c < cols; c += 32) st(y, base + c, ld(resid, base + c, dt_r) * inv * (ld(w, c, dt_w) + off), dt_y);
}

// x̂ = x·rstd, g = w⊙dy: dx += rstd·(g − x̂·mean(g⊙x̂)) = rstd·g − rstd³·mean(g⊙x)·x.
extern "C" __global__ void rmsnorm_backward_dx(void* dx, int dt_dx, const void* dy, int dt_dy, const void* x, int dt_x,
                                               const void* w, int dt_w, const float* rstd, int rows, int cols, float off, int accumulate)
{
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    i64 base = (i64)row * cols;
    float inv = rstd[row];
    float dot = 0.0f;
    for (int c = lane; c < cols; c += 32) dot += ld(dy, base + c, dt_dy) * (ld(w, c, dt_w) + off) * ld(x, base + c, dt_x);
    dot = warp_sum(dot);
    float k = inv * inv * inv * dot / cols;
    for (int c = lane; c < cols; c += 32)
    {
        float g = ld(dy, base + c, dt_dy) * (ld(w, c, dt_w) + off);
        // Written, not accumulated: 0 in place of dx's old value, the same arithmetic (and bits) as on a zeroed dx.
        float prior = accumulate ? ld(dx, base + c, dt_dx) : 0.0f;
        st(dx, base + c, prior + inv * g - k * ld(x, base + c, dt_x), dt_dx);
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

// One row's resid = a + b (stored as bf16), and this lane's part of Σ resid² over the values as stored: the residual
// norm's first pass, shared by residual_rmsnorm_forward_v8 and its fp8 form (the same bits in each).
__device__ __forceinline__ float residual_row_v8(uint4* resid, const uint4* a, const uint4* b, i64 base, int c8, int lane)
{
    float ss = 0.0f;
    for (int c = lane; c < c8; c += 32)
    {
        float u[8], v[8]; unpack8(a[base + c], u); unpack8(b[base + c], v);
#pragma unroll
        for (int j = 0; j < 8; j++) u[j] += v[j];
        uint4 packed = pack8(u);
        resid[base + c] = packed;
        unpack8(packed, u); // normalise what was stored, as an unfused add then norm would
#pragma unroll
        for (int j = 0; j < 8; j++) ss += u[j] * u[j];
    }
    return ss;
}

// bf16 fast paths: one warp per row, eight columns per lane and step (cols multiple of 8, rows 16-byte aligned).
extern "C" __global__ void rmsnorm_forward_v8(uint4* y, float* rstd, const uint4* x, const uint4* w, int rows, int cols, float eps, float off)
{
    pdl_trigger(); // the next GEMV may start streaming its weight (common.cuh)
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    int c8 = cols >> 3;
    const uint4* xr = x + (i64)row * c8;
    float inv = rms_rstd_v8(xr, cols, eps, lane);
    if (lane == 0) rstd[row] = inv;
    uint4* yr = y + (i64)row * c8;
    for (int c = lane; c < c8; c += 32) yr[c] = rms_scale_v8(xr[c], w[c], inv, off);
}

extern "C" __global__ void residual_rmsnorm_forward_v8(uint4* resid, uint4* y, float* rstd, const uint4* a, const uint4* b, const uint4* w,
                                                       int rows, int cols, float eps, float off)
{
    pdl_trigger(); // the next GEMV may start streaming its weight (common.cuh)
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    int c8 = cols >> 3;
    i64 base = (i64)row * c8;
    float ss = warp_sum(residual_row_v8(resid, a, b, base, c8, lane));
    float inv = rsqrtf(ss / cols + eps);
    if (lane == 0) rstd[row] = inv;
    for (int c = lane; c < c8; c += 32) y[base + c] = rms_scale_v8(resid[base + c], w[c], inv, off);
}

extern "C" __global__ void rmsnorm_backward_dx_v8(uint4* dx, const uint4* dy, const uint4* x, const uint4* w, const float* rstd, int rows, int cols, float off,
                                                  int accumulate)
{
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    int c8 = cols >> 3;
    i64 base = (i64)row * c8;
    float inv = rstd[row];
    float dot = 0.0f;
    for (int c = lane; c < c8; c += 32)
    {
        float d[8], g[8], v[8]; unpack8(dy[base + c], d); unpack8(w[c], g); unpack8(x[base + c], v);
#pragma unroll
        for (int j = 0; j < 8; j++) dot += d[j] * (g[j] + off) * v[j];
    }
    dot = warp_sum(dot);
    float k = inv * inv * inv * dot / cols;
    for (int c = lane; c < c8; c += 32)
    {
        float d[8], g[8], v[8], o[8] = {0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f, 0.0f};
        unpack8(dy[base + c], d); unpack8(w[c], g); unpack8(x[base + c], v);
        if (accumulate) unpack8(dx[base + c], o);
#pragma unroll
        for (int j = 0; j < 8; j++) o[j] = o[j] + inv * (d[j] * (g[j] + off)) - k * v[j];
        dx[base + c] = pack8(o);
    }
}

// One row of a fused norm-and-cast: y = x·inv·(w + off) as rms_scale_v8 stores it, and its E4M3 codes with scale s;
// max |y| into m (the lane's running amax).
__device__ __forceinline__ void rms_store_fp8_row_v8(uint4* yr, uint2* qr, const uint4* xr, const uint4* w, int c8, float inv, float off,
                                                     float s, float& m, int lane)
{
    for (int c = lane; c < c8; c += 32)
    {
        uint4 packed = rms_scale_v8(xr[c], w[c], inv, off);
        yr[c] = packed;
        float v[8];
        stored8(packed, v, m);
        qr[c] = fp8_encode8(v, s, FP8_E4M3);
    }
}

// rmsnorm_forward_v8, and q = the E4M3 codes of y as stored with the ready site's scale (site[0]); max |y| is max-ed
// into site[1] and block 0 writes scale_inv (fp8_quantize_delayed_v8 of y, without its read of y). q 8-byte aligned.
// A warp past the last row skips the row but not the block's amax reduction, which every thread joins.
extern "C" __global__ void rmsnorm_forward_fp8_v8(uint4* y, float* rstd, uint2* q, float* scale_inv, float* site, const uint4* x, const uint4* w,
                                                  int rows, int cols, float eps, float off)
{
    float s = fp8_scale(site[0], FP8_E4M3, scale_inv);
    float m = 0.0f;
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row < rows)
    {
        int c8 = cols >> 3;
        const uint4* xr = x + (i64)row * c8;
        float inv = rms_rstd_v8(xr, cols, eps, lane);
        if (lane == 0) rstd[row] = inv;
        rms_store_fp8_row_v8(y + (i64)row * c8, q + (i64)row * c8, xr, w, c8, inv, off, s, m, lane);
    }
    fp8_record_amax(site, m);
}

// residual_rmsnorm_forward_v8 (resid may be a: in place), and y's E4M3 codes as stored with the ready site, as above.
extern "C" __global__ void residual_rmsnorm_forward_fp8_v8(uint4* resid, uint4* y, float* rstd, uint2* q, float* scale_inv, float* site,
                                                           const uint4* a, const uint4* b, const uint4* w, int rows, int cols, float eps, float off)
{
    float s = fp8_scale(site[0], FP8_E4M3, scale_inv);
    float m = 0.0f;
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);
    int lane = threadIdx.x & 31;
    if (row < rows)
    {
        int c8 = cols >> 3;
        i64 base = (i64)row * c8;
        float ss = warp_sum(residual_row_v8(resid, a, b, base, c8, lane));
        float inv = rsqrtf(ss / cols + eps);
        if (lane == 0) rstd[row] = inv;
        rms_store_fp8_row_v8(y + base, q + base, resid + base, w, c8, inv, off, s, m, lane);
    }
    fp8_record_amax(site, m);
}
