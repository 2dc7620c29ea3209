// SwiGLU: h = silu(g) ⊙ u with silu(g) = g·σ(g).
#include "common.cuh"

extern "C" __global__ void swiglu_forward(void* h, int dt_h, const void* gate, int dt_g, const void* up, int dt_u, i64 n)
{
    pdl_trigger(); // the next GEMV may start streaming its weight (common.cuh)
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
        // Every input is read before either output is stored: dgate may be gate and dup may be up (in place).
        float g = ld(gate, i, dt_g), d = ld(dh, i, dt_dh), u = ld(up, i, dt_u);
        float sig = 1.0f / (1.0f + expf(-g));
        st(dup, i, d * g * sig, dt_du);
        st(dgate, i, d * u * sig * (1.0f + g * (1.0f - sig)), dt_dg);
    }
}

// bf16 fast paths, eight elements per thread and step (n8 = n / 8).
extern "C" __global__ void swiglu_forward_v8(uint4* h, const uint4* gate, const uint4* up, i64 n8)
{
    pdl_trigger(); // the next GEMV may start streaming its weight (common.cuh)
    GRID_STRIDE(i, n8)
    {
        float g[8], u[8], r[8];
        unpack8(gate[i], g); unpack8(up[i], u);
#pragma unroll
        for (int j = 0; j < 8; j++) r[j] = g[j] * (1.0f / (1.0f + expf(-g[j]))) * u[j];
        h[i] = pack8(r);
    }
}

extern "C" __global__ void swiglu_backward_v8(uint4* dgate, uint4* dup, const uint4* dh, const uint4* gate, const uint4* up, i64 n8)
{
    GRID_STRIDE(i, n8)
    {
        float g[8], u[8], d[8], dg[8], du[8];
        unpack8(gate[i], g); unpack8(up[i], u); unpack8(dh[i], d);
#pragma unroll
        for (int j = 0; j < 8; j++)
        {
            float sig = 1.0f / (1.0f + expf(-g[j]));
            du[j] = d[j] * g[j] * sig;
            dg[j] = d[j] * u[j] * sig * (1.0f + g[j] * (1.0f - sig));
        }
        dup[i] = pack8(du);
        dgate[i] = pack8(dg);
    }
}
