// SwiGLU: h = silu(g) ⊙ u with silu(g) = g·σ(g).
// fp8_scaling: delayed (a ready site's scale is known before the kernel runs): the *_fp8_v8 kernels also write the FP8
// codes of their bf16 outputs for the next product, with fp8.cuh's cast of fp8_quantize_delayed_v8, so the codes, the
// scale inverse and the recorded amax are those of the separate cast, which would read the outputs back once more.
#include "fp8.cuh"

// h's element before rounding, shared by the bf16 forward kernels (the same code in each).
__device__ __forceinline__ float swiglu_value(float g, float u) { return g * (1.0f / (1.0f + expf(-g))) * u; }

// dgate's and dup's elements as swiglu_backward computes them (its formula below), shared by the bf16 backward kernels.
__device__ __forceinline__ void swiglu_gradients(float g, float u, float d, float& dg, float& du)
{
    float sig = 1.0f / (1.0f + expf(-g));
    du = d * g * sig;
    dg = d * u * sig * (1.0f + g * (1.0f - sig));
}

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
        for (int j = 0; j < 8; j++) r[j] = swiglu_value(g[j], u[j]);
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
        for (int j = 0; j < 8; j++) swiglu_gradients(g[j], u[j], d[j], dg[j], du[j]);
        dup[i] = pack8(du);
        dgate[i] = pack8(dg);
    }
}

// swiglu_forward_v8, and q = the E4M3 codes of h as stored with the ready site's scale (site[0]); max |h| is max-ed
// into site[1] and block 0 writes scale_inv (fp8_quantize_delayed_v8 of h, without its read of h). q 8-byte aligned.
extern "C" __global__ void swiglu_forward_fp8_v8(uint4* h, uint2* q, float* scale_inv, float* site, const uint4* gate, const uint4* up, i64 n8)
{
    float s = fp8_scale(site[0], FP8_E4M3, scale_inv);
    float m = 0.0f;
    GRID_STRIDE(i, n8)
    {
        float g[8], u[8], r[8];
        unpack8(gate[i], g); unpack8(up[i], u);
#pragma unroll
        for (int j = 0; j < 8; j++) r[j] = swiglu_value(g[j], u[j]);
        uint4 packed = pack8(r);
        h[i] = packed;
        stored8(packed, r, m);
        q[i] = fp8_encode8(r, s, FP8_E4M3);
    }
    fp8_record_amax(site, m);
}

// swiglu_backward_v8 (in place allowed), and each output's E5M2 codes as stored with its own ready site (qg, inv_g,
// site_g for dgate; qu, inv_u, site_u for dup), each amax recorded into its site.
extern "C" __global__ void swiglu_backward_fp8_v8(uint4* dgate, uint4* dup, const uint4* dh, const uint4* gate, const uint4* up, i64 n8,
                                                  uint2* qg, float* inv_g, float* site_g, uint2* qu, float* inv_u, float* site_u)
{
    float sg = fp8_scale(site_g[0], FP8_E5M2, inv_g), su = fp8_scale(site_u[0], FP8_E5M2, inv_u);
    float mg = 0.0f, mu = 0.0f;
    GRID_STRIDE(i, n8)
    {
        float g[8], u[8], d[8], dg[8], du[8];
        unpack8(gate[i], g); unpack8(up[i], u); unpack8(dh[i], d);
#pragma unroll
        for (int j = 0; j < 8; j++) swiglu_gradients(g[j], u[j], d[j], dg[j], du[j]);
        uint4 pu = pack8(du), pg = pack8(dg);
        dup[i] = pu;
        dgate[i] = pg;
        stored8(pu, du, mu);
        stored8(pg, dg, mg);
        qu[i] = fp8_encode8(du, su, FP8_E5M2);
        qg[i] = fp8_encode8(dg, sg, FP8_E5M2);
    }
    fp8_record_amax(site_g, mg);
    fp8_record_amax(site_u, mu);
}
