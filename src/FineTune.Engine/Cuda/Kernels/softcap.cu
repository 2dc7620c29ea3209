// Soft-capping (gemma's final_logit_softcapping): y = cap·tanh(x/cap); backward dx ⊙= 1 − (y/cap)², from the output
// as torch's tanh backward takes it.
#include "common.cuh"

extern "C" __global__ void softcap_forward(void* y, int dt_y, const void* x, int dt_x, float cap, i64 n)
{
    GRID_STRIDE(i, n)
    {
        st(y, i, cap * tanhf(ld(x, i, dt_x) / cap), dt_y);
    }
}

extern "C" __global__ void softcap_backward(void* dx, int dt_dx, const void* y, int dt_y, float cap, i64 n)
{
    GRID_STRIDE(i, n)
    {
        float t = ld(y, i, dt_y) / cap;
        st(dx, i, ld(dx, i, dt_dx) * (1.0f - t * t), dt_dx);
    }
}
