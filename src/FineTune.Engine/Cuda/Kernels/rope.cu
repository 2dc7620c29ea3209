// Rotary position embedding, rotate-half convention (HF transformers), in place on x [N, heads·headDim]:
// (x_i, x_{i+h}) ← (x_i·cos − x_{i+h}·sin, x_{i+h}·cos + x_i·sin), cos/sin = table[pos, i], i < h = headDim/2.
// sign = −1 rotates by −θ (the backward).
#include "common.cuh"

extern "C" __global__ void rope_apply(void* x, int dt, const int* positions, const float* cos_t, const float* sin_t,
                                      int n, int heads, int head_dim, int max_pos, float sign)
{
    int half = head_dim >> 1;
    i64 total = (i64)n * heads * half;
    GRID_STRIDE(e, total)
    {
        int i = (int)(e % half);
        i64 th = e / half;           // token·heads + head
        int t = (int)(th / heads);
        int pos = positions[t];
        if (pos < 0 || pos >= max_pos) continue;
        i64 base = th * head_dim;
        float co = cos_t[(i64)pos * half + i], si = sign * sin_t[(i64)pos * half + i];
        float a = ld(x, base + i, dt), b = ld(x, base + i + half, dt);
        st(x, base + i, a * co - b * si, dt);
        st(x, base + i + half, b * co + a * si, dt);
    }
}

// rope_apply on bf16 x eight rotation pairs per thread (half a multiple of 8, x and the tables 16-byte aligned): one
// 16-byte load of x_i … x_{i+7} and one of x_{i+h} … x_{i+h+7}, the same fp32 arithmetic per pair, so the same bits.
extern "C" __global__ void rope_apply_v8(uint4* x, const int* positions, const float4* cos_t, const float4* sin_t, int n, int heads,
                                         int head_dim, int max_pos, float sign)
{
    int half = head_dim >> 1, groups = half >> 3;
    i64 total = (i64)n * heads * groups;
    GRID_STRIDE(e, total)
    {
        int g = (int)(e % groups);
        i64 th = e / groups;         // token·heads + head
        int t = (int)(th / heads);
        int pos = positions[t];
        if (pos < 0 || pos >= max_pos) continue;
        i64 lo = (th * head_dim + g * 8) >> 3, hi = lo + (half >> 3);
        i64 tab = ((i64)pos * half + g * 8) >> 2;
        float co[8], si[8], a[8], b[8], ra[8], rb[8];
        *(float4*)co = cos_t[tab]; *(float4*)(co + 4) = cos_t[tab + 1];
        *(float4*)si = sin_t[tab]; *(float4*)(si + 4) = sin_t[tab + 1];
        unpack8(x[lo], a); unpack8(x[hi], b);
#pragma unroll
        for (int j = 0; j < 8; j++)
        {
            float s = sign * si[j];
            ra[j] = a[j] * co[j] - b[j] * s;
            rb[j] = b[j] * co[j] + a[j] * s;
        }
        x[lo] = pack8(ra); x[hi] = pack8(rb);
    }
}
