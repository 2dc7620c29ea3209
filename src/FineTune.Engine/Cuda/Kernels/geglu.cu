// GeGLU (gemma's MLP): h = gelu_tanh(g) ⊙ u, gelu_tanh(g) = ½·g·(1 + tanh(√(2/π)·(g + 0.044715·g³)))
// (torch's gelu(approximate="tanh"), transformers' gelu_pytorch_tanh), in fp32, rounded once.
#include "common.cuh"

#define GELU_C 0.7978845608028654f
#define GELU_A 0.044715f

__device__ __forceinline__ float gelu_tanh(float g)
{
    return 0.5f * g * (1.0f + tanhf(GELU_C * (g + GELU_A * g * g * g)));
}

// gelu_tanh'(g) = ½·(1 + t) + ½·g·(1 − t²)·√(2/π)·(1 + 3·0.044715·g²), t = tanh(√(2/π)·(g + 0.044715·g³)).
__device__ __forceinline__ float gelu_tanh_grad(float g)
{
    float t = tanhf(GELU_C * (g + GELU_A * g * g * g));
    return 0.5f * (1.0f + t) + 0.5f * g * (1.0f - t * t) * GELU_C * (1.0f + 3.0f * GELU_A * g * g);
}

extern "C" __global__ void geglu_forward(void* h, int dt_h, const void* gate, int dt_g, const void* up, int dt_u, i64 n)
{
    GRID_STRIDE(i, n)
    {
        st(h, i, gelu_tanh(ld(gate, i, dt_g)) * ld(up, i, dt_u), dt_h);
    }
}

// du = dh·gelu_tanh(g); dg = dh·u·gelu_tanh'(g).
extern "C" __global__ void geglu_backward(void* dgate, int dt_dg, void* dup, int dt_du, const void* dh, int dt_dh,
                                          const void* gate, int dt_g, const void* up, int dt_u, i64 n)
{
    GRID_STRIDE(i, n)
    {
        // Inputs read before the stores: dgate may be gate and dup may be up (in place).
        float g = ld(gate, i, dt_g), d = ld(dh, i, dt_dh), u = ld(up, i, dt_u);
        st(dup, i, d * gelu_tanh(g), dt_du);
        st(dgate, i, d * u * gelu_tanh_grad(g), dt_dg);
    }
}
