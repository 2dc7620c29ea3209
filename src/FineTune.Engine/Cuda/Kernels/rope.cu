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
