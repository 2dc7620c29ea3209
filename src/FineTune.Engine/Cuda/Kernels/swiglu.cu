// SwiGLU: h = silu(g) ⊙ u with silu(g) = g·σ(g).
#include "common.cuh"

extern "C" __global__ void swiglu_forward(void* h, int dt_h, const void* gate, int dt_g, const void* up, int dt_u, i64 n)
{
    GRID_STRIDE(i, n)
    {
        float g = ld(gate, i, dt_g);
        float sig = 1.0f / (1.0f + expf(-g));
        st(h, i, g * sig * ld(up, i, dt_u), dt_h);
    }
}

// du = dh·silu(g); dg = dh·u·silu'(g), silu'(g) = σ(g)·(1 + g·(1 − σ(g))).
extern "C" __global__ void swiglu_backward(void* dgate, int dt_dg, void* dup, int dt_du, const void* dh, int dt_dh,
                                           const void* gate, int dt_g, const void* up, int dt_u, i64 n)
{
    GRID_STRIDE(i, n)
    {
        float g = ld(gate, i, dt_g), d = ld(dh, i, dt_dh);
        float sig = 1.0f / (1.0f + expf(-g));
        st(dup, i, d * g * sig, dt_du);
        st(dgate, i, d * ld(up, i, dt_u) * sig * (1.0f + g * (1.0f - sig)), dt_dg);
    }
}
