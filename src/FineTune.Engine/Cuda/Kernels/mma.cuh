// Tensor-core building blocks shared by flash_attention.cu and experts.cu: mma.sync m16n8k16 (bf16 operands,
// fp32 accumulators), ldmatrix fragment loads from shared memory, and cp.async copies global → shared.
//
// Fragment layouts of mma.m16n8k16 (g = lane/4, t = lane%4):
//   A (16×16, row): a0 = (g, 2t..2t+1), a1 = (g+8, 2t..), a2 = (g, 2t+8..), a3 = (g+8, 2t+8..)
//   B (16×8, col):  b0 = (k 2t..2t+1, n g), b1 = (k 2t+8.., n g)
//   C (16×8, f32):  c0 = (g, 2t), c1 = (g, 2t+1), c2 = (g+8, 2t), c3 = (g+8, 2t+1)
// Tiles sit in shared memory row-major as they are in global memory (e.g. [key][dim], [row][k]); fragments are read with
// ldmatrix (x4: four 8×8 matrices per instruction), with .trans where the product needs the other orientation.
#pragma once
#include "common.cuh"

typedef unsigned short bf16_t;

__device__ __forceinline__ void mma16816(float* c, const unsigned* a, unsigned b0, unsigned b1)
{
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Two floats rounded to bf16 (nearest even, as f32_to_bf16) in one register, `lo` in the low half: one instruction.
__device__ __forceinline__ unsigned pack_bf16(float lo, float hi)
{
    unsigned r;
    asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ unsigned smem_addr(const void* p)
{
    unsigned long long s;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(s) : "l"(p));
    return (unsigned)s;
}

// ldmatrix from a 32-bit shared-memory address (smem_addr of a tile plus a byte offset): a kernel that keeps its tiles'
// addresses in registers pays one instruction per load instead of a pointer conversion and 64-bit arithmetic.
__device__ __forceinline__ void ldsm_x4_at(unsigned* r, unsigned addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4_trans_at(unsigned* r, unsigned addr)
{
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
}

__device__ __forceinline__ void ldsm_x4(unsigned* r, const bf16_t* p) { ldsm_x4_at(r, smem_addr(p)); }

__device__ __forceinline__ void ldsm_x4_trans(unsigned* r, const bf16_t* p) { ldsm_x4_trans_at(r, smem_addr(p)); }

// Element offset, within a tile of row stride `stride`, of the row this lane hands ldmatrix: for A fragments (and the
// transposed B loads, which address [k][n] tiles the same way) and for B fragments of [n][k] tiles.
__device__ __forceinline__ int lane_off_a(int stride, int lane) { return ((lane & 7) + ((lane >> 3) & 1) * 8) * stride + (lane >> 4) * 8; }
__device__ __forceinline__ int lane_off_b_nk(int stride, int lane) { return ((lane & 7) + (lane >> 4) * 8) * stride + ((lane >> 3) & 1) * 8; }

// A fragment (rows r0..r0+15, k0..k0+15) of a row-major tile.
__device__ __forceinline__ void frag_a(unsigned* a, const bf16_t* tile, int stride, int r0, int k0, int lane)
{
    ldsm_x4(a, tile + r0 * stride + k0 + lane_off_a(stride, lane));
}

// B fragments of two adjacent n-tiles (n0..n0+15) × (k0..k0+15) from a tile stored [n][k] (rows are n):
// b[0], b[1] for n-tile n0; b[2], b[3] for n-tile n0+8.
__device__ __forceinline__ void frag_b_nk(unsigned* b, const bf16_t* tile, int stride, int n0, int k0, int lane)
{
    ldsm_x4(b, tile + n0 * stride + k0 + lane_off_b_nk(stride, lane));
}

// The same from a tile stored [k][n] (rows are k), transposed by ldmatrix.
__device__ __forceinline__ void frag_b_kn(unsigned* b, const bf16_t* tile, int stride, int n0, int k0, int lane)
{
    ldsm_x4_trans(b, tile + k0 * stride + n0 + lane_off_a(stride, lane));
}

// 16 bytes global → shared (a 32-bit shared address), asynchronously; valid = false copies nothing and zero-fills the
// 16 bytes (src-size 0), so src must still be a legal address (callers pass the tensor's base).
__device__ __forceinline__ void cp_async16_at(unsigned dst, const void* src, bool valid)
{
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" :: "r"(dst), "l"(src), "r"(valid ? 16 : 0));
}

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) { cp_async16_at(smem_addr(dst), src, valid); }

// 2^x with flush-to-zero (one MUFU instruction; results below 2^-126 become 0, which exp2f would keep as subnormals).
__device__ __forceinline__ float exp2_ftz(float x)
{
    float r;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(r) : "f"(x));
    return r;
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;" :: "n"(N) : "memory"); }
// The same with n known only at run time (0 … 7; wait_group takes a constant): decode.cu's decode_layer FIFO.
__device__ __forceinline__ void cp_async_wait_n(int n)
{
    switch (n)
    {
    case 0: cp_async_wait<0>(); break;
    case 1: cp_async_wait<1>(); break;
    case 2: cp_async_wait<2>(); break;
    case 3: cp_async_wait<3>(); break;
    case 4: cp_async_wait<4>(); break;
    case 5: cp_async_wait<5>(); break;
    case 6: cp_async_wait<6>(); break;
    default: cp_async_wait<7>(); break;
    }
}
